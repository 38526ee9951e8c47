"""Section ``forward`` of benchmarks/run.py: the model forward alone, each library in its own process.

Also `--backend auto`'s one-time measurement before anything is timed (:func:`prewarm_auto`),
which times the forward of each backend.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from run_common import HERE, PY, contender_json, load_average, log, per_round_ratios, quietly, ratio, run_child

FORWARD_LIBS = ("effnet", "effnet-engine", "effnet-auto", "onnxruntime", "openvino", "effnet-engine-bf16",
                "effnet-auto-bf16", "openvino-bf16", "torchvision", "timm", "transformers")
# Measured in every round, so that their ratios can be taken within a round (the others only in the first):
# effnet's default backend (auto), `--backend torch` (optimize()) and the runtimes used directly.
RATIO_LIBS = ("effnet-engine", "effnet-auto", "onnxruntime", "openvino", "effnet-engine-bf16", "effnet-auto-bf16",
              "openvino-bf16")


def forward_plan(quick: bool) -> list[tuple[str, int, int, int, int]]:
    """(variant, batch, warmup, iterations, rounds) per measurement."""
    if quick:
        return [("b0", 16, 1, 3, 2), ("b0", 1, 2, 5, 2)]
    return [("b0", 16, 2, 10, 4), ("b0", 1, 5, 20, 4), ("b7", 1, 1, 3, 1), ("b7", 16, 1, 1, 1)]


def run_forward(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Forward rows, and the ratios of effnet's default backend to the others, as medians of per-round ratios."""
    rows, ratios = [], []
    for variant, batch, warmup, iters, rounds in forward_plan(quick):
        results: dict[str, list[dict[str, Any]]] = {lib: [] for lib in FORWARD_LIBS}
        by_round: dict[str, list[float]] = {lib: [] for lib in RATIO_LIBS}
        for rep in range(rounds):
            # Rotate the order each round, so drift in the machine's load does not favour one library.
            libs = FORWARD_LIBS if rep == 0 else RATIO_LIBS
            order = libs[rep % len(libs):] + libs[:rep % len(libs)]
            for lib in order:
                cmd = [PY, str(HERE / "contenders.py"), "forward", "--lib", lib, "--variant", variant,
                       "--batch", str(batch), "--warmup", str(warmup), "--iters", str(iters)]
                run = quietly(f"forward {variant} batch {batch} {lib}", lambda cmd=cmd: run_child(cmd))
                if run.returncode != 0 or not run.lines:
                    log(f"forward {lib} {variant} b{batch} failed: {run.stderr[-500:]}")
                    if lib in by_round:
                        by_round[lib].append(float("nan"))
                    continue
                data = json.loads(run.lines[-1])
                data["foreign_share"] = run.foreign_share
                results[lib].append(data)
                if lib in by_round:
                    by_round[lib].append(data["images_per_s"])
                log(f"forward {variant} batch {batch} {lib}: {data['images_per_s']:.1f} img/s, "
                    f"{data['peak_rss_mb']:.0f} MB (load {load_average()})")
        for lib, runs in results.items():
            if not runs:
                continue
            rates = [r["images_per_s"] for r in runs]
            rows.append({"variant": variant, "size": runs[0]["size"], "batch": batch, "lib": lib,
                         "images_per_s": statistics.median(rates), "runs": rates, "warmup": warmup, "iters": iters,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                         "foreign_share": max(r["foreign_share"] for r in runs)})
        if variant == "b0":
            for name, num, den in (("default ÷ best(ONNX Runtime, OpenVINO)", "effnet-auto", ("onnxruntime", "openvino")),
                                   ("default ÷ --backend torch", "effnet-auto", ("effnet-engine",)),
                                   ("default bf16 ÷ OpenVINO bf16", "effnet-auto-bf16", ("openvino-bf16",))):
                r = ratio(name, per_round_ratios(by_round, num, den), variant=variant, batch=batch)
                ratios.append(r)
                log(f"forward {variant} batch {batch}: {name} = {r['median']} (rounds {r['per_round']})")
    return rows, ratios


def prewarm_auto(sections: set[str], quick: bool) -> dict[str, Any]:
    """Let `--backend auto` export, measure and remember its choice for every model, batch size and dtype timed
    later, so that no timed process includes that one-time work."""
    # b0: cheap (seconds), and every section runs it. b7 only for the CLI runs of the e2e section (each
    # forward contender's own set-up is not timed); at 600 px this takes minutes.
    plans = [("b0", ["1", "16"], ["float32", "bfloat16"])]
    if "e2e" in sections and not quick:
        plans.append(("b7", ["16"], ["float32"]))
    out: dict[str, Any] = {}
    for variant, batches, dtypes in plans:
        data = contender_json(["prewarm", "--variant", variant, "--batches", *batches, "--dtypes", *dtypes])
        if data:
            out[variant] = data["choices"]
            log(f"auto's choices for {variant}: {data['choices']}")
    return out

