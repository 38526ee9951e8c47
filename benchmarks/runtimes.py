"""The runtimes used directly, and effnet's Python API around them: forward contenders that take numpy input.

benchmarks/contenders.py runs them (``forward``, ``serve-forward``, ``call-cost``); each builds the
same b0 export in effnet's cache first, so that every contender runs the very same graph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prepare  # noqa: E402

# Contenders that take numpy input (the runtimes used directly, and effnet's Engine around them).
NUMPY_LIBS = ("effnet-api", "onnxruntime", "openvino", "openvino-bf16")


def onnx_file(variant: str) -> str:
    """The same weights as every other contender, exported once to ONNX (effnet's exporter, its cache)."""
    from effnet_cli import load_pretrained

    # Through the API, so the export is also recorded in the index where backend="auto" finds it.
    model, _ = load_pretrained(str(prepare.effnet_dir(variant)), backend="onnxruntime")
    return str(model.directory / "model.onnx")


def runtime_forward(lib: str, variant: str, batch: int) -> Callable[[Any], Any]:
    """ONNX Runtime or OpenVINO used directly, set up as their documentation recommends for throughput."""
    import os

    import numpy as np

    path = onnx_file(variant)
    if lib == "effnet-api":
        # The Python API's default for runtimes: `load_pretrained(..., backend="auto")` finds the export
        # cached above and runs each batch size in the faster runtime (measured once, remembered).
        from effnet_cli import load_pretrained

        model, _ = load_pretrained(str(prepare.effnet_dir(variant)), backend="auto")
        return lambda x: model(x).logits
    if lib == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["logits"], {"pixel_values": x})[0]
    import openvino as ov

    config = {"PERFORMANCE_HINT": "THROUGHPUT" if batch > 1 else "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if lib == "openvino-bf16" else "f32"}
    compiled = ov.Core().compile_model(path, "CPU", config)
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, requests)

    def call(x: Any) -> Any:
        # The async API over one slice per infer request: OpenVINO's recommended way to fill its streams.
        slices = np.array_split(x, min(requests, len(x)))
        for i, part in enumerate(slices):
            queue.start_async({0: part}, i)
        queue.wait_all()
        return [queue[i].get_output_tensor(0).data for i in range(len(slices))]

    return call


def serve_forward(args: argparse.Namespace) -> None:
    """A runtime contender held open and timed on request, so that others can be timed in between.

    Prints ``ready`` once set up and warm; then for each line ``N`` on stdin, two untimed calls
    (the caches and the thread pool warm again after another process ran) and N timed ones, and one
    JSON line with images/s from the median call. numpy only: no torch in this process.
    """
    import numpy as np

    call = runtime_forward(args.lib, args.variant, args.batch)
    size = prepare.VARIANTS[args.variant][0]
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)
    for _ in range(args.warmup):
        call(x)
    print("ready", flush=True)
    for line in sys.stdin:
        call(x)
        call(x)
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            call(x)
            times.append(time.perf_counter() - start)
        print(json.dumps({"images_per_s": args.batch / statistics.median(times)}), flush=True)


def run_call_cost(args: argparse.Namespace) -> dict[str, Any]:
    """What the API's call adds around ONNX Runtime's ``session.run``, in µs per call.

    The API's model and a direct call are timed with the session's ``run`` replaced by a stub that
    returns outputs computed beforehand, so only the Python around the runtime is measured: the
    checks and conversions of ``RuntimeModel.__call__``, the runner, the output object.
    """
    import timeit

    import numpy as np

    from effnet_cli import load_pretrained

    model, _ = load_pretrained(str(prepare.effnet_dir(args.variant)), backend="onnxruntime")
    size = prepare.VARIANTS[args.variant][0]
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)
    runner = model.engine.runner
    outputs = runner.session.run(None, {"pixel_values": x})
    names = [o.name for o in runner.session.get_outputs()]

    class Stub:
        def run(self, wanted: list[str], feed: dict[str, Any]) -> list[Any]:
            return [outputs[names.index(name)] for name in wanted]

    runner.session = stub = Stub()
    number = 20000
    api = min(timeit.repeat(lambda: model(x), number=number, repeat=5)) / number
    direct = min(timeit.repeat(lambda: stub.run(["logits"], {"pixel_values": x}), number=number, repeat=5)) / number
    return {"variant": args.variant, "batch": args.batch, "api_us": api * 1e6, "direct_us": direct * 1e6}
