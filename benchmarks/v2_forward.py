"""EfficientNetV2-S forward: effnet's default backend against timm's and torchvision's eager models, same weights.

    python benchmarks/v2_forward.py --out /tmp/v2_forward.json

Two pairs, each on one set of weights: timm's ``tf_efficientnetv2_s`` (TF-'same' padding) and
effnet's conversion of it; torchvision's ``efficientnet_v2_s`` (symmetric padding) and effnet's
conversion of that (each model's own seeded initialisation gives the weights; the speed does not
depend on their values). effnet runs as the CLI runs by default (``Engine`` with ``backend="auto"``,
told the batch size; its one-time measurement is made in a process of its own before anything is
timed, and remembered in $EFFNET_CACHE); timm and torchvision run eagerly in channels-last, as their inference scripts do.
Each measurement is its own process (ONNX Runtime's and OpenVINO's spinning threads would slow a
torch model sharing the process); the contenders take turns, the order rotated each round, and a
ratio is the median of the per-round ratios, so a shared machine's load falls on all of them alike.
Each conversion is verified against its source (1e-4 relative) before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PLAN = {1: (2, 5), 16: (1, 3)}  # batch -> (warm-up calls, timed calls) per measurement
CONTENDERS = ("timm", "torchvision", "effnet-timm", "effnet-torchvision")
SOURCES = {"timm": "tf_efficientnetv2_s", "torchvision": "efficientnet_v2_s"}


def _source_model(lib: str) -> Any:
    """timm's or torchvision's V2-S in eval mode, with its own seeded initialisation."""
    import torch

    torch.manual_seed(0)
    if lib == "timm":
        import timm

        return timm.create_model(SOURCES[lib], pretrained=False).eval()
    import torchvision

    return torchvision.models.efficientnet_v2_s(weights=None).eval()


def prepare(work: Path, size: int) -> None:
    """Save each source's weights and effnet's verified conversion of them (preprocessing set to ``size`` px)."""
    from safetensors.torch import save_file

    from effnet_cli.convert import convert_checkpoint

    for lib, arch in SOURCES.items():
        path = work / f"{lib}.safetensors"
        save_file({k: v.contiguous() for k, v in _source_model(lib).state_dict().items()}, str(path))
        out = work / f"effnet-{lib}"
        report = convert_checkpoint(path, out, source=lib, arch=arch, verify=True, verify_size=128)
        if not report.verify.passed:
            raise SystemExit(f"effnet's conversion of {lib}'s weights does not match: {report.verify}")
        # The exported runtimes are built for the processor's input size: the size timed here.
        processor_file = out / "preprocessor_config.json"
        processor = json.loads(processor_file.read_text())
        processor.update(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        processor_file.write_text(json.dumps(processor))
    # `--backend auto` exports, measures and remembers its choice per batch size now, in a process of its own:
    # done inside a timed process, the runtimes it tried would still hold their threads there.
    subprocess.run([sys.executable, __file__, "--prewarm", "--work", str(work), "--size", str(size)], check=True)


def prewarm(work: Path) -> None:
    """Let auto choose, for both conversions and every batch size, before anything is timed."""
    from effnet_cli.runtime.engine import Engine

    for lib in SOURCES:
        for batch in PLAN:
            engine = Engine.from_pretrained(str(work / f"effnet-{lib}"), device="cpu", backend="auto",
                                            batch_size=batch)
            print(f"effnet-{lib} batch {batch}: auto chose {engine.backend}", file=sys.stderr)


def _call(lib: str, work: Path, batch: int) -> tuple[Callable[[Any], Any], bool, str]:
    """(the forward to time, whether it takes channels-last input, what runs it)."""
    import torch

    if lib.startswith("effnet-"):
        from effnet_cli.runtime.engine import Engine

        engine = Engine.from_pretrained(str(work / lib), device="cpu", backend="auto", batch_size=batch)
        return engine.logits, False, str(engine.backend)
    from safetensors.torch import load_file

    model = _source_model(lib)
    model.load_state_dict(load_file(str(work / f"{lib}.safetensors")))
    return model.to(memory_format=torch.channels_last), True, "eager"


def time_one(lib: str, work: Path, batch: int, size: int) -> dict[str, Any]:
    """Images per second of one contender (batch size over the median time of the timed calls), and its backend."""
    import torch

    warmup, iters = PLAN[batch]
    call, channels_last, backend = _call(lib, work, batch)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            call(x)
        for _ in range(iters):
            start = time.perf_counter()
            call(x)
            times.append(time.perf_counter() - start)
    return {"images_per_s": batch / statistics.median(times), "backend": backend, "times_s": times}


def measure(work: Path, size: int, rounds: int) -> dict[str, Any]:
    """Per batch size: each contender's images/s per round (a process each), and effnet's per-round ratios."""
    results: dict[str, Any] = {}
    for batch in PLAN:
        rates: dict[str, list[float]] = {lib: [] for lib in CONTENDERS}
        backends: dict[str, set[str]] = {lib: set() for lib in CONTENDERS}
        for round_ in range(rounds):
            for lib in CONTENDERS[round_ % len(CONTENDERS):] + CONTENDERS[:round_ % len(CONTENDERS)]:
                cmd = [sys.executable, __file__, "--one", lib, "--work", str(work), "--batch", str(batch),
                       "--size", str(size)]
                run = subprocess.run(cmd, capture_output=True, text=True, check=True)
                one = json.loads(run.stdout.strip().splitlines()[-1])
                rates[lib].append(one["images_per_s"])
                backends[lib].add(one["backend"])
                print(f"batch {batch} round {round_} {lib} ({one['backend']}): {rates[lib][-1]:.2f} img/s",
                      file=sys.stderr)
        ratios = {f"effnet ÷ {lib}": statistics.median(a / b for a, b in zip(rates[f"effnet-{lib}"], rates[lib]))
                  for lib in SOURCES}
        results[str(batch)] = {"images_per_s": {k: statistics.median(v) for k, v in rates.items()},
                               "per_round": rates, "ratios": ratios,
                               "backends": {k: sorted(v) for k, v in backends.items()}, "warmup": PLAN[batch][0],
                               "iters": PLAN[batch][1]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224,
                        help="input side (V2-S evaluates at 384; 224 keeps a run on two busy cores to minutes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--one", choices=CONTENDERS, help=argparse.SUPPRESS)  # a child: time one contender
    parser.add_argument("--prewarm", action="store_true", help=argparse.SUPPRESS)  # a child: auto's choices
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, choices=sorted(PLAN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(time_one(args.one, args.work, args.batch, args.size)))
        return
    if args.prewarm:
        prewarm(args.work)
        return

    import torch

    from effnet_cli.host import cpu_name, usable_cores

    with tempfile.TemporaryDirectory() as work:
        prepare(Path(work), args.size)
        results = measure(Path(work), args.size, args.rounds)
    report = {"cpu": cpu_name(), "cores": usable_cores(), "torch_threads": torch.get_num_threads(),
              "size": args.size, "rounds": args.rounds, "batches": results}
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
