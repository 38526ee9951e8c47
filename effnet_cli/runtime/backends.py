"""Inference backends: PyTorch, or an export run in ONNX Runtime or OpenVINO.

``Engine(..., backend=...)`` and the CLI's ``--backend`` choose among
:data:`BACKENDS`; this module holds that choice and ``auto``'s measurement. For
``onnxruntime`` and ``openvino`` the model is exported once
(:mod:`effnet_cli.runtime.export`) into effnet's cache and reused by every later
run (:mod:`effnet_cli.runtime.cache`), and run by :mod:`effnet_cli.runtime.runners`.

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

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError
from effnet_cli.host import cpu_name, installed, package_version, usable_cores
from effnet_cli.output import write_text
from effnet_cli.runtime.cache import cache_lock, export_versions, runner_for, weights_hash, writable_dir
from effnet_cli.runtime.runners import require_runtime

__all__ = ["AUTO_MEASURE_MIN_IMAGES", "BACKENDS", "auto_candidates", "available_backends", "choose_backend",
           "measured_choice", "time_backends"]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


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


def _forward_call(backend: str, model: Any, processor: Any, dtype: str, x: Any,
                  weights: str | None = None) -> tuple[Callable[[], None], float]:
    """One forward pass of ``backend`` on the batch ``x``, ready to be timed, and the seconds its warm-up took."""
    import torch

    from effnet_cli.runtime.export import output_names

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
        name = "logits" if "logits" in output_names(model) else "features"

        def call() -> None:
            runner.run(xn, [name])
    import time

    call()  # warm-up: first-call allocations and, for OpenVINO, compilation
    start = time.perf_counter()
    call()
    return call, time.perf_counter() - start


def time_backends(calls: dict[str, tuple[Callable[[], None], float]], batch: int) -> dict[str, float]:
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

    from effnet_cli.runtime.export import fixed_input_size
    from effnet_cli.weights.resolve import cache_root

    batch = max(1, int(batch))
    versions = {name: export_versions("openvino").get(name, "-") for name in ("torch", "onnx", "openvino")}
    if "onnxruntime" in candidates:
        versions["onnxruntime"] = package_version("onnxruntime")
    weights = weights or weights_hash(model)
    parts = {"weights": weights, "size": list(fixed_input_size(processor)), "dtype": dtype,
             "candidates": sorted(candidates), "versions": versions, "cpu": cpu_name(), "cores": usable_cores(),
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
    writable_dir(root)
    with cache_lock(record):
        choice = remembered()
        if choice is not None:
            return choice
        if announce is not None:
            announce(None)
        h, w = fixed_input_size(processor)
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
        rates = time_backends({name: _forward_call(name, model, processor, dtype, x, weights)
                                for name in candidates}, batch)
        choice = max(rates, key=rates.__getitem__)
        with contextlib.suppress(OSError):  # a full cache only costs later runs the measurement
            write_text(record, json.dumps({"backend": choice, "images_per_s": rates, **parts}, indent=2))
        if announce is not None:
            announce(rates)
    return choice

