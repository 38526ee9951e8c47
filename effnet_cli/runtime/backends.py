"""Inference backends: PyTorch, or an export run in ONNX Runtime or OpenVINO.

``Engine(..., backend=...)`` and the CLI's ``--backend`` choose among
:data:`BACKENDS`. For ``onnxruntime`` and ``openvino`` the model is exported
once (:mod:`effnet_cli.runtime.export`) into effnet's cache and reused by every later
run; :func:`cached_export` keys each export by everything that changes its
contents: the weights, the dtype, the input size, the format and the versions
of the exporter and the runtime. Concurrent runs are safe: one exports while
the others wait on a lock, and an export only ever appears under its final
name complete (written into a temporary directory, then renamed).

``auto`` (the CLI's default) measures: the first time a model runs with
``auto`` at a batch size on a machine, each backend that can run it times a few
forward passes of a random batch of that size, the fastest is remembered in the
cache beside the exports, and later runs reuse that choice. Candidates:

* on a GPU, or when the run needs something only the PyTorch model has
  (``--compile``, ``embed --features stage:N``, preprocessing without a fixed
  size): torch only;
* on the CPU: torch, OpenVINO (with ``--dtype bfloat16`` only when OpenVINO
  reports native bfloat16 on this CPU, asked at run time) and ONNX Runtime
  (float32 only: it has no bfloat16 convolutions), each when installed.

Exporting and measuring take some seconds once per model, batch size and
machine; a caller may pass ``measure=False`` (the CLI does for runs of fewer
than :data:`AUTO_MEASURE_MIN_IMAGES` inputs) to use a remembered choice when
there is one and PyTorch otherwise, so a handful of photos never waits for it.

The remembered choice is keyed by the weights, input size, dtype, batch size,
the candidates and their versions, the CPU model and the number of usable cores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.output import publish_dir, temp_dir, write_text

__all__ = ["AUTO_MEASURE_MIN_IMAGES", "BACKENDS", "auto_candidates", "available_backends", "cached_export",
           "choose_backend", "measured_choice", "open_runner", "usable_cores"]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}


def usable_cores() -> int:
    """CPU cores this process may run on (taskset and container limits respected)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def installed(name: str) -> bool:
    """True when the runtime package ``name`` can be imported."""
    return importlib.util.find_spec(name) is not None


def available_backends() -> list[str]:
    """The concrete backends this installation can run."""
    return ["torch"] + [name for name in ("onnxruntime", "openvino") if installed(name)]


def _openvino_bf16() -> bool:
    """True when OpenVINO reports native bfloat16 on this CPU (AVX512-BF16 or AMX): decided at run time."""
    import openvino as ov

    try:
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def choose_backend(requested: str, *, device_type: str, dtype: str, needs_torch: str | None = None) -> str:
    """The concrete backend for ``requested``, or "auto" when only a measurement can tell (:func:`measured_choice`).

    ``needs_torch`` names a setting only the PyTorch model supports (None: none); an explicit
    ``onnxruntime`` or ``openvino`` with such a setting, an unsupported device or dtype, or a
    runtime that is not installed is an :class:`InputError`.
    """
    if requested not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}.")
    if requested == "torch":
        return "torch"
    if requested == "auto":
        candidates = auto_candidates(device_type=device_type, dtype=dtype, needs_torch=needs_torch)
        return candidates[0] if len(candidates) == 1 else "auto"
    from effnet_cli.runtime.export import require_runtime

    require_runtime(requested)
    if needs_torch:
        raise InputError(f"--backend {requested} runs an exported model, which cannot do {needs_torch}; "
                         "use --backend torch.")
    if requested == "openvino" and device_type != "cpu":
        raise InputError("--backend openvino runs on the CPU here; use --device cpu or --backend torch.")
    if requested == "onnxruntime" and dtype == "bfloat16":
        raise InputError("ONNX Runtime has no bfloat16 convolutions on the CPU; use --dtype float32, "
                         "--backend openvino or --backend torch.")
    if requested == "onnxruntime" and device_type not in ("cpu", "cuda"):
        raise InputError(f"--backend onnxruntime runs on cpu or cuda, not {device_type}.")
    return requested


def auto_candidates(*, device_type: str, dtype: str, needs_torch: str | None = None) -> list[str]:
    """The backends ``auto`` chooses among for this device, dtype and run (torch first)."""
    if needs_torch or device_type != "cpu":
        return ["torch"]
    found = ["torch"]
    if installed("openvino") and (dtype != "bfloat16" or _openvino_bf16()):
        found.append("openvino")
    if installed("onnxruntime") and dtype == "float32":
        found.append("onnxruntime")
    return found


PROBE_BATCH = 16  # the CLI's default --batch-size
PROBE_ROUNDS = 3
PROBE_ROUND_S = 1.0  # the longest a round may take per backend, unless one pass takes longer
# A probe times at least this many images per backend, so a batch of one is not judged on three calls.
PROBE_MIN_IMAGES = 48
# Runs of fewer inputs than this do not export and measure for ``auto`` (they use a remembered choice, or
# PyTorch): on 2 cores the once-per-model export and measurement take about 7 s, which the faster runtime
# wins back only over hundreds to thousands of images (docs/export.md, "Choosing a backend").
AUTO_MEASURE_MIN_IMAGES = 1000


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _forward_call(backend: str, model: Any, processor: Any, dtype: str, x: Any,
                  weights: str | None = None) -> tuple[Callable[[], None], float]:
    """One forward pass of ``backend`` on the batch ``x``, ready to be timed, and the seconds its warm-up took."""
    import torch

    if backend == "torch":
        from effnet_cli.runtime.fused import optimize

        fast = optimize(model, device="cpu", dtype=getattr(torch, dtype))
        # bfloat16's float32 stem reads float32 pixels (optimize's input_dtype), as the Engine passes them.
        xt = x.to(getattr(fast, "input_dtype", getattr(torch, dtype))).contiguous(memory_format=torch.channels_last)

        def call() -> None:
            with torch.inference_mode():
                fast(xt)
    else:
        runner = runner_for(model, processor, backend, dtype=dtype, device_type="cpu", batch=len(x), weights=weights)
        xn = x.numpy()
        name = "logits" if "logits" in _outputs(model) else "features"

        def call() -> None:
            runner.run(xn, [name])
    import time

    call()  # warm-up: first-call allocations and, for OpenVINO, compilation
    start = time.perf_counter()
    call()
    return call, time.perf_counter() - start


def _time_backends(calls: dict[str, tuple[Callable[[], None], float]], batch: int) -> dict[str, float]:
    """Images/s of each call: :data:`PROBE_ROUNDS` interleaved rounds, the median round per backend.

    Interleaving spreads drift in the machine's speed (other programs, clocks) over every backend
    alike, so two backends a few percent apart are not ranked by when each happened to run. A
    round is :data:`PROBE_MIN_IMAGES` images, or fewer passes when one pass takes long (b7), so
    the whole measurement stays within about a minute.
    """
    import statistics
    import time

    slowest = max(seconds for _, seconds in calls.values())
    passes = max(1, min(-(-PROBE_MIN_IMAGES // batch), int(PROBE_ROUND_S / max(slowest, 1e-6))))
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(PROBE_ROUNDS):
        for name, (call, _) in calls.items():
            # One untimed call first: the runtime timed before may still have threads spinning for work
            # (OpenVINO's, ONNX Runtime's at batch 1), which would slow this one's first pass.
            call()
            start = time.perf_counter()
            for _ in range(passes):
                call()
            rates[name].append(passes * batch / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def _outputs(model: Any) -> list[str]:
    from effnet_cli.runtime.export import output_names

    return output_names(model)


def measured_choice(model: Any, processor: Any, candidates: Sequence[str], *, dtype: str,
                    batch: int = PROBE_BATCH, measure: bool = True, cache: Path | None = None,
                    announce: Callable[[dict[str, float] | None], None] | None = None,
                    weights: str | None = None) -> str | None:
    """The fastest of ``candidates`` for this model at batch size ``batch`` on this CPU: measured once, remembered.

    The measurement (a few forward passes of a random batch of ``batch`` images in each backend)
    is stored as JSON in the cache, under a lock, so concurrent first runs measure once. With
    ``measure=False`` nothing is exported or timed: the remembered choice, or None when there is none.
    ``announce`` is called with None just before a measurement starts (the CLI says why the run
    pauses), and with the measured images/s per backend once it is done. ``weights`` is
    :func:`weights_hash` of ``model`` when the caller has it already (None: computed here).
    """
    import torch
    from filelock import FileLock

    from effnet_cli.runtime.export import fixed_input_size
    from effnet_cli.weights.resolve import cache_root

    batch = max(1, int(batch))
    versions = {name: _versions("openvino").get(name, "-") for name in ("torch", "onnx", "openvino")}
    if "onnxruntime" in candidates:
        from importlib.metadata import version

        versions["onnxruntime"] = version("onnxruntime")
    weights = weights or weights_hash(model)
    parts = {"weights": weights, "size": list(fixed_input_size(processor)), "dtype": dtype,
             "candidates": sorted(candidates), "versions": versions, "cpu": _cpu_name(), "cores": usable_cores(),
             "batch": batch}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    root = (cache or cache_root()) / "exports" / "auto"
    record = root / f"{key}.json"

    def remembered() -> str | None:
        try:
            choice = json.loads(record.read_text("utf-8")).get("backend")
        except (OSError, ValueError):
            return None
        return choice if choice in candidates else None

    choice = remembered()
    if choice is not None or not measure:
        return choice
    _writable(root)
    with FileLock(str(record) + ".lock"):
        choice = remembered()
        if choice is not None:
            return choice
        if announce is not None:
            announce(None)
        h, w = fixed_input_size(processor)
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
        rates = _time_backends({name: _forward_call(name, model, processor, dtype, x, weights)
                                for name in candidates}, batch)
        choice = max(rates, key=rates.__getitem__)
        write_text(record, json.dumps({"backend": choice, "images_per_s": rates, **parts}, indent=2))
        if announce is not None:
            announce(rates)
    return choice


# --------------------------------------------------------------------------- #
# The cache of exports
# --------------------------------------------------------------------------- #


def weights_hash(model: Any) -> str:
    """sha256 over the model's config and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    import torch

    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)  # numpy has no bfloat16; the bytes are what matter
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _versions(fmt: str) -> dict[str, str]:
    """Versions of everything that shapes an export of format ``fmt``."""
    import torch

    from effnet_cli import __version__
    from effnet_cli.runtime.export import GRAPH_VERSION, OPSET

    found = {"effnet": __version__, "graph": str(GRAPH_VERSION), "opset": str(OPSET), "torch": torch.__version__}
    for name in ("onnx", "onnxscript") + (("openvino",) if fmt == "openvino" else ()):
        try:
            from importlib.metadata import version

            found[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package simply is not part of the key
            found[name] = "-"
    return found


def export_key(model: Any, processor: Any, fmt: str, dtype: str, weights: str | None = None) -> str:
    """The cache key of an export: weights, preprocessing, input size, format, dtype and tool versions.

    ``weights`` is :func:`weights_hash` of ``model`` when the caller has it already (None: computed here).
    """
    from effnet_cli.runtime.export import fixed_input_size

    parts = {"weights": weights or weights_hash(model), "size": list(fixed_input_size(processor)), "format": fmt,
             "dtype": dtype, "versions": _versions(fmt), "model_class": type(model).__name__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _writable(directory: Path) -> Path:
    """``directory``, created if needed; an InputError saying what to do when it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot write effnet's cache at {directory} ({exc.strerror or exc}); set EFFNET_CACHE "
                         "to a writable directory, or use --backend torch.") from None
    return directory


def cached_export(model: Any, processor: Any, fmt: str, dtype: str = "float32", *,
                  cache: Path | None = None, weights: str | None = None) -> Path:
    """The directory of a cached export of ``model`` (made now if missing); safe under concurrent runs.

    The first run to need an export takes a lock beside it and writes it into a
    temporary directory that is renamed into place when complete; runs that
    come meanwhile wait on the lock and then use the finished export.
    """
    from filelock import FileLock

    from effnet_cli.runtime.export import model_file, write_export
    from effnet_cli.weights.resolve import cache_root

    # The weights are hashed once here, not again for the ONNX export an OpenVINO one is converted from.
    weights = weights or weights_hash(model)
    root = _writable((cache or cache_root()) / "exports" / fmt)
    final = root / export_key(model, processor, fmt, dtype, weights)
    if model_file(final, fmt).is_file():
        return final
    # OpenVINO converts the (cached) float32 ONNX export rather than exporting again.
    source = (model_file(cached_export(model, processor, "onnx", "float32", cache=cache, weights=weights), "onnx")
              if fmt == "openvino" else None)
    with FileLock(str(final) + ".lock"):
        if model_file(final, fmt).is_file():  # another run finished it while we waited
            return final
        tmp = temp_dir(final)  # under the lock: publish_dir cannot meet another writer's directory
        try:
            write_export(model, processor, tmp, fmt=fmt, dtype=dtype, onnx_source=source)
            publish_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- #
# Runners: an export in its runtime
# --------------------------------------------------------------------------- #


class OnnxRuntimeRunner:
    """An ONNX model in ONNX Runtime: every usable core for one session, all graph optimisations."""

    def __init__(self, path: Path, *, device_type: str = "cpu", threads: int | None = None, batch: int = 16) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or usable_cores()
        options.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
        # Memory patterns pre-plan one arena block per batch shape: b7 at 600 px and batch 16 peaked at 6.7 GB
        # with them and 3.9 GB without, at the same speed (b0: 226 vs 229 images/s at batch 16). The arena
        # itself stays: without it b0's batch of 16 ran at 132 images/s.
        options.enable_mem_pattern = False
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" and batch > 1:
            # The same choice as for torch's OpenMP threads (see effnet_cli.cli.app.main): threads that
            # spin while waiting take whole time slices from other programs on shared cores. Single
            # images keep spinning: their operators are so short that waking sleeping threads for each
            # one cost a fifth of the speed (b0, 2 cores: 188 against 236 images/s).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device_type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise InputError("This ONNX Runtime has no CUDA support; pip install onnxruntime-gpu, "
                                 "or use --backend torch.")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, pixel_values: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The named outputs for N×3×H×W float32 pixel values."""
        got = self.session.run(list(outputs), {self.input_name: np.ascontiguousarray(pixel_values, np.float32)})
        return dict(zip(outputs, got))


# OpenVINO's runtime attribute that keeps a layer at its own (float32) precision; the CPU plugin
# honours it under the bfloat16 inference precision hint too (checked in tests/test_backends.py).
_KEEP_PRECISION = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}


def keep_float32(path: Path) -> str:
    """The IR text of ``path`` (model.xml) with the stem and the first stage marked to run in float32.

    Compiled with bfloat16 precision, OpenVINO then runs these layers in float32 and the rest in
    bfloat16: the split :func:`effnet_cli.runtime.fused.optimize` uses in bfloat16, for the same reason
    (most top-1 flips come from rounding early in the network; benchmarks/bf16_agreement.py). They
    are every layer before the first weight of the second stage's first block (named after the
    PyTorch module in the export; the IR's layers are in topological order). OpenVINO itself keeps
    the pooling after the last convolution in float32 and gives the classifier a float32 output;
    the classifier cannot be marked (the attribute does not survive OpenVINO's conversion of the
    MatMul to its own FullyConnected op). Without the export's config.json, or when no layer has
    that name, nothing is marked; an IR marked already (``effnet export --dtype bfloat16``) is
    returned as it is.
    """
    import re
    import xml.etree.ElementTree as ET

    from effnet_cli.core.config import EfficientNetConfig

    text = path.read_text("utf-8")
    config_file = path.parent / "config.json"
    if not config_file.is_file() or _KEEP_PRECISION["name"] in text:  # no config, or marked already
        return text
    blocks = EfficientNetConfig.from_json_file(config_file).blocks()
    boundary = next((b.index for b in blocks if b.stage > 0), None)
    if boundary is None:
        return text
    root = ET.fromstring(text)
    early = []
    for layer in root.iter("layer"):
        kind, name = layer.get("type"), layer.get("name", "")
        if kind == "Const" and re.search(rf"encoder\.blocks\.{boundary}\.", name):
            break
        if kind not in ("Const", "Parameter"):
            early.append(layer)
    else:  # no such weight: an IR named otherwise; marking every layer would run it all in float32
        return text
    for layer in early:
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.SubElement(layer, "rt_info")
        ET.SubElement(rt_info, "attribute", _KEEP_PRECISION)
    return ET.tostring(root, encoding="unicode")


class OpenVinoRunner:
    """An OpenVINO model on the CPU, compiled for the batch size it first sees.

    Batches of more than one image use the THROUGHPUT hint: OpenVINO runs several
    streams, and the batch is split into one slice per infer request, run
    asynchronously, so every stream has work. Single images use the LATENCY hint
    (one stream over all cores).
    """

    def __init__(self, path: Path, *, dtype: str = "float32") -> None:
        import openvino as ov

        self.core = ov.Core()
        if dtype == "bfloat16":
            self.model = self.core.read_model(keep_float32(path), ov.Tensor(np.fromfile(path.with_suffix(".bin"),
                                                                                        dtype=np.uint8)))
        else:
            self.model = self.core.read_model(str(path))
        self.dtype = dtype
        self.compiled: Any = None
        self.queue: Any = None
        self._request: Any = None
        self._names: list[str] = []
        self.requests = 1

    def _compile(self, batch: int) -> None:
        import openvino as ov

        config = {"PERFORMANCE_HINT": "THROUGHPUT" if batch > 1 else "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if self.dtype == "bfloat16" else "f32"}
        self.compiled = self.core.compile_model(self.model, "CPU", config)
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self.queue.set_callback(self._done)
        self._results: dict[int, list[np.ndarray]] = {}

    def _done(self, request: Any, slot: tuple[int, list[int]]) -> None:
        key, indices = slot
        self._results[key] = [request.get_output_tensor(i).data.copy() for i in indices]

    def run(self, pixel_values: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The named outputs for N×3×H×W float32 pixel values."""
        if self.compiled is None:
            self._compile(len(pixel_values))
            self._names = [o.get_any_name() for o in self.compiled.outputs]
        indices = [self._names.index(o) for o in outputs]
        x = np.ascontiguousarray(pixel_values, np.float32)
        if len(x) == 1 or self.requests == 1:
            # One slice: a synchronous call on one request, without the queue's callback round trip.
            request = self._request or self.compiled.create_infer_request()
            self._request = request
            request.infer({0: x})
            return {name: request.get_output_tensor(i).data.copy() for name, i in zip(outputs, indices)}
        # A fixed-batch export takes its batch whole; a dynamic one is split over the infer requests.
        split = self.compiled.inputs[0].get_partial_shape()[0].is_dynamic and len(x) > 1
        slices = np.array_split(x, min(self.requests, len(x))) if split else [x]
        self._results = {}
        for key, part in enumerate(slices):
            self.queue.start_async({0: part}, (key, indices))
        self.queue.wait_all()
        parts = [self._results[k] for k in range(len(slices))]
        return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(outputs)}


def open_runner(path: str | Path, fmt: str, *, dtype: str = "float32", device_type: str = "cpu",
                batch: int = 16) -> Any:
    """A runner for the export at ``path`` (model.onnx or model.xml) in its runtime, set up for batches of ``batch``."""
    from effnet_cli.runtime.export import require_runtime

    if fmt == "onnx":
        require_runtime("onnxruntime")
        return OnnxRuntimeRunner(Path(path), device_type=device_type, batch=batch)
    require_runtime("openvino")
    return OpenVinoRunner(Path(path), dtype=dtype)


def runner_for(model: Any, processor: Any, backend: str, *, dtype: str, device_type: str, batch: int = 16,
               weights: str | None = None) -> Any:
    """Export ``model`` for ``backend`` (or reuse the cached export) and open it in that runtime.

    ``weights`` is :func:`weights_hash` of ``model`` when the caller has it already (None: computed here).
    """
    from effnet_cli.runtime.export import model_file

    fmt = _FORMAT[backend]
    # The cached OpenVINO IR is float32; bfloat16 is the precision it is compiled with.
    directory = cached_export(model, processor, fmt, "float32", weights=weights)
    return open_runner(model_file(directory, fmt), fmt, dtype=dtype, device_type=device_type, batch=batch)
