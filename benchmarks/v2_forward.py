"""EfficientNetV2-S forward: effnet's default backend against timm's and torchvision's eager models, same weights.

    python benchmarks/v2_forward.py --out /tmp/v2_forward.json

Two pairs, each on one set of weights: timm's ``tf_efficientnetv2_s`` (TF-'same' padding) and
effnet's conversion of it; torchvision's ``efficientnet_v2_s`` (symmetric padding) and effnet's
conversion of that. Each model's own initialisation gives the weights (the speed does not depend
on their values). effnet runs as the CLI runs by default (``Engine`` with ``backend="auto"``, told
the batch size, so its one-time measurement happens before anything is timed); timm and
torchvision run eagerly in channels-last, as their own inference scripts do. All contenders live
in this one process and are timed in turns, the order rotated each round, and a ratio is the
median of the per-round ratios, so the load of a shared machine falls on all of them alike.
Before timing, each effnet model is checked against its source's logits (1e-4 relative).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PLAN = {1: (2, 5), 16: (1, 2)}  # batch -> (warm-up calls, timed calls) per round


def _sources() -> dict[str, Any]:
    """timm's and torchvision's V2-S, eval mode, seeded init."""
    import timm
    import torch
    import torchvision

    torch.manual_seed(0)
    return {"timm": timm.create_model("tf_efficientnetv2_s", pretrained=False).eval(),
            "torchvision": torchvision.models.efficientnet_v2_s(weights=None).eval()}


def _effnet(source: Any, name: str, work: Path, batch: int, size: int) -> Callable[[Any], Any]:
    """effnet's default engine for ``source``'s weights, converted through ``effnet convert``, at ``size`` px.

    The preprocessing written by the conversion is set to ``size`` (a center crop of that side), which is
    the input size the exported runtimes are built for.
    """
    import torch
    from safetensors.torch import save_file

    from effnet_cli.convert import convert_checkpoint
    from effnet_cli.runtime.engine import Engine

    out = work / f"effnet-{name}"
    if not out.exists():
        path = work / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
        arch = "tf_efficientnetv2_s" if name == "timm" else "efficientnet_v2_s"
        report = convert_checkpoint(path, out, source=name, arch=arch, verify=True, verify_size=128)
        if not report.verify.passed:
            raise SystemExit(f"effnet's {name} conversion does not match: {report.verify}")
        processor_file = out / "preprocessor_config.json"
        processor = json.loads(processor_file.read_text())
        processor.update(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        processor_file.write_text(json.dumps(processor))
    engine = Engine.from_pretrained(str(out), device="cpu", backend="auto", batch_size=batch)
    print(f"effnet ({name} weights), batch {batch}: backend {engine.backend}", file=sys.stderr)
    return lambda x: engine.logits(x)


def _time(call: Callable[[Any], Any], x: Any, warmup: int, iters: int) -> float:
    """Images per second: batch size over the median time of ``iters`` calls after ``warmup`` calls."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            call(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            call(x)
            times.append(time.perf_counter() - start)
    return x.shape[0] / statistics.median(times)


def measure(size: int, rounds: int, work: Path) -> dict[str, Any]:
    """Per batch size: images/s of each contender per round, and effnet's per-round ratios to timm and torchvision."""
    import torch

    sources = _sources()
    results: dict[str, Any] = {}
    for batch, (warmup, iters) in PLAN.items():
        calls = {"timm": sources["timm"].to(memory_format=torch.channels_last),
                 "torchvision": sources["torchvision"].to(memory_format=torch.channels_last),
                 "effnet (timm weights)": _effnet(sources["timm"], "timm", work, batch, size),
                 "effnet (torchvision weights)": _effnet(sources["torchvision"], "torchvision", work, batch, size)}
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        rates: dict[str, list[float]] = {name: [] for name in calls}
        names = list(calls)
        for round_ in range(rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                channels_last = name in ("timm", "torchvision")
                rates[name].append(_time(calls[name], x.contiguous(memory_format=torch.channels_last)
                                         if channels_last else x, warmup, iters))
                print(f"batch {batch} round {round_} {name}: {rates[name][-1]:.2f} img/s", file=sys.stderr)
        ratios = {f"effnet ÷ {lib}": statistics.median(a / b for a, b in zip(rates[f"effnet ({lib} weights)"],
                                                                                  rates[lib]))
                  for lib in ("timm", "torchvision")}
        results[str(batch)] = {"images_per_s": {k: statistics.median(v) for k, v in rates.items()},
                               "per_round": rates, "ratios": ratios, "warmup": warmup, "iters": iters}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224,
                        help="input side (V2-S evaluates at 384; 224 keeps a run on two busy cores to minutes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    from effnet_cli.host import cpu_name, usable_cores

    with tempfile.TemporaryDirectory() as work:
        results = measure(args.size, args.rounds, Path(work))
    report = {"cpu": cpu_name(), "cores": usable_cores(), "torch_threads": torch.get_num_threads(),
              "size": args.size, "rounds": args.rounds, "batches": results}
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
