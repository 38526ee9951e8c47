"""Runners: an export in its runtime, ONNX Runtime or OpenVINO, behind one ``run(pixels, outputs)`` call.

:func:`open_runner` opens an export directory's model file (:mod:`effnet_cli.runtime.export` writes
them, :mod:`effnet_cli.runtime.cache` keeps them) for batches of a given size. OpenVINO in bfloat16
first rewrites the IR (:func:`keep_float32`) so that the stem and the first stage run in float32, as
:func:`effnet_cli.runtime.fused.optimize` does; the exporter writes the same rewrite into the IR it
publishes. Nothing here imports torch, and onnxruntime or openvino only when a runner is opened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.host import installed, usable_cores

__all__ = ["FILE_OF", "FORMAT_OF", "GRAPH_VERSION", "OnnxRuntimeRunner", "OpenVinoRunner", "keep_float32", "model_file",
           "open_runner", "require_runtime"]

FILE_OF = {"onnx": "model.onnx", "openvino": "model.xml"}  # export format -> its model file
FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino"}  # backend -> the export format it runs
# The exported graph's version, bumped when it changes (outputs, names, wrapper, rewrites) so that cached
# exports are redone; here, without torch, for the export index as well as the exporter.
GRAPH_VERSION = 2  # 2: squeeze-and-excitation means as GlobalAveragePool


def model_file(directory: str | Path, fmt: str) -> Path:
    """The model file inside an export directory of format ``fmt``."""
    return Path(directory) / FILE_OF[fmt]


def require_runtime(name: str) -> None:
    """An InputError saying what to install when the package ``name`` is missing.

    The runtimes and the exporter's packages are dependencies of effnet, so this only happens in an
    environment where one was removed or failed to install (e.g. a platform without its wheels).
    """
    if not installed(name):
        raise InputError(f"{name} is not installed; pip install {name}, or use --backend torch.")


# The largest batch ONNX Runtime runs at once on the CPU. b0 at batch 16 held 365 MB in the process that
# ran it, in slices of 8 262 MB; 1,000 camera JPEGs ran at 152-156 images/s in slices against 147-154
# whole (2 cores; docs/benchmarks.md, "1,000 camera JPEGs with ONNX Runtime").
CPU_CHUNK = 8

_ARENA_REGISTERED: list[bool] = []


def _use_exact_arena(ort: Any) -> None:
    """Register, once per process, a CPU arena that extends by the size requested (kSameAsRequested).

    ONNX Runtime's default arena extends in powers of two, so its last extension may reserve almost
    twice what the model needs; an arena without extension (enable_cpu_mem_arena=False) halved b0's speed.
    """
    if _ARENA_REGISTERED:
        return
    same_as_requested = 1  # ArenaExtendStrategy::kSameAsRequested
    config = ort.OrtArenaCfg(0, same_as_requested, -1, -1)
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, config)
    _ARENA_REGISTERED.append(True)


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
        # The arena grows by what each allocation asks rather than doubling: b0 at batch 16 peaked at
        # 313 MB instead of 356 MB, at the same speed (244 against 245 images/s, 2 cores).
        _use_exact_arena(ort)
        options.add_session_config_entry("session.use_env_allocators", "1")
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
        self.chunk = CPU_CHUNK if device_type == "cpu" else None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, pixel_values: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The named outputs for N×3×H×W float32 pixel values.

        On the CPU a batch larger than :data:`CPU_CHUNK` runs in slices of that size: the arena holds
        one slice's activations instead of the whole batch's.
        """
        x = np.ascontiguousarray(pixel_values, np.float32)
        if self.chunk is None or len(x) <= self.chunk:
            return dict(zip(outputs, self.session.run(list(outputs), {self.input_name: x})))
        parts = [self.session.run(list(outputs), {self.input_name: x[i:i + self.chunk]})
                 for i in range(0, len(x), self.chunk)]
        return {name: np.concatenate([part[j] for part in parts]) for j, name in enumerate(outputs)}


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

    from effnet_cli.core.config_v2 import read_config

    text = path.read_text("utf-8")
    config_file = path.parent / "config.json"
    if not config_file.is_file() or _KEEP_PRECISION["name"] in text:  # no config, or marked already
        return text
    blocks = read_config(config_file).blocks()
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

    def __init__(self, path: Path, *, dtype: str = "float32", threads: int | None = None) -> None:
        import openvino as ov

        self.threads = threads  # None: OpenVINO's own choice (every usable core)

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
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
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
            request.infer({0: x}, share_inputs=True)  # x outlives the call: no copy of the batch
            return {name: request.get_output_tensor(i).data.copy() for name, i in zip(outputs, indices)}
        # A fixed-batch export takes its batch whole; a dynamic one is split over the infer requests.
        split = self.compiled.inputs[0].get_partial_shape()[0].is_dynamic and len(x) > 1
        slices = np.array_split(x, min(self.requests, len(x))) if split else [x]
        self._results = {}
        for key, part in enumerate(slices):
            self.queue.start_async({0: part}, (key, indices), share_inputs=True)  # slices of x, alive to wait_all
        self.queue.wait_all()
        parts = [self._results[k] for k in range(len(slices))]
        return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(outputs)}


def open_runner(path: str | Path, fmt: str, *, dtype: str = "float32", device_type: str = "cpu",
                batch: int = 16, threads: int | None = None) -> Any:
    """A runner for the export at ``path`` (model.onnx or model.xml) in its runtime, set up for batches of ``batch``.

    ``threads``: the CPU threads it may use (None: every usable core); a process that shares the
    machine with other model processes (a Ray actor) passes its share.
    """
    if fmt == "onnx":
        require_runtime("onnxruntime")
        return OnnxRuntimeRunner(Path(path), device_type=device_type, batch=batch, threads=threads)
    require_runtime("openvino")
    return OpenVinoRunner(Path(path), dtype=dtype, threads=threads)
