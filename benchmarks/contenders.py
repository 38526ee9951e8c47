"""One contender of the benchmark, run alone in this process so its memory peak is its own.

    python benchmarks/contenders.py forward --lib effnet --variant b0 --batch 16 --warmup 2 --iters 10
    python benchmarks/contenders.py serve-forward --lib onnxruntime --variant b0 --batch 1
    python benchmarks/contenders.py e2e --lib timm --variant b0 --batch 16 --workers 2 --list paths.txt

``forward`` times the model alone on a fixed random batch and prints one JSON
line (images/s from the median iteration, peak RSS); ``serve-forward`` does
the same on request, for a parent that times several such processes in turn. ``e2e`` classifies the
listed images (decode, preprocess, model, top-5) and prints one JSON record
per image as soon as it is known, which the parent timestamps; ``effnet
classify`` itself is run by the parent as the real CLI. Every contender gets
the same weights (benchmarks/prepare.py) and torch's default thread count.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prepare  # noqa: E402
from runtimes import NUMPY_LIBS, onnx_file, run_call_cost, runtime_forward, serve_forward  # noqa: E402

LIBS = ("effnet", "effnet-api", "effnet-engine", "effnet-engine-bf16", "effnet-auto", "effnet-auto-bf16", "onnxruntime",
        "openvino", "openvino-bf16", "torchvision", "transformers", "timm")
def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MB.

    VmHWM belongs to the address space made at exec, so unlike ``ru_maxrss`` it does
    not start from the parent's size at fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ forward
def build_forward(lib: str, variant: str, batch: int = 16) -> tuple[Callable[[Any], Any], bool]:
    """(model call returning logits, whether it wants channels-last input)."""
    import torch

    if lib in ("effnet", "effnet-engine", "effnet-engine-bf16"):
        from effnet_cli import load_pretrained
        from effnet_cli.runtime.fused import optimize

        model, _ = load_pretrained(str(prepare.effnet_dir(variant)))
        # "effnet-engine": optimize() as `--backend torch` runs it; "effnet": glibc's allocator at its defaults.
        if lib == "effnet-engine-bf16":
            fast = optimize(model, dtype=torch.bfloat16)
            return (lambda x: fast(x.to(torch.bfloat16)).logits), True
        fast = optimize(model, keep_freed_memory=lib != "effnet")
        return (lambda x: fast(x).logits), True
    if lib in ("effnet-auto", "effnet-auto-bf16"):
        from effnet_cli.runtime.engine import Engine

        # Told the batch size, as the CLI tells it: auto's choice is measured per batch size (and remembered
        # in $EFFNET_CACHE, where run.py has measured it already, so this process only reads it).
        engine = Engine.from_pretrained(str(prepare.effnet_dir(variant)), device="cpu", backend="auto",
                                        dtype="bfloat16" if lib.endswith("bf16") else None, batch_size=batch)
        return engine.logits, False
    if lib == "torchvision":
        model = prepare.torchvision_model(variant).to(memory_format=torch.channels_last)
        return model, True
    if lib == "timm":
        model = prepare.timm_model(variant).to(memory_format=torch.channels_last)
        return model, True
    if lib == "transformers":
        from transformers import EfficientNetForImageClassification

        model = EfficientNetForImageClassification.from_pretrained(prepare.hf_dir(variant)).eval()
        return (lambda x: model(pixel_values=x).logits), False
    raise SystemExit(f"unknown lib {lib}")


def run_forward(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    size = prepare.VARIANTS[args.variant][0]
    if args.lib in NUMPY_LIBS:
        call, channels_last = runtime_forward(args.lib, args.variant, args.batch), False
    else:
        call, channels_last = build_forward(args.lib, args.variant, args.batch)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if args.lib in NUMPY_LIBS:
        x = x.numpy()
    times = []
    with torch.inference_mode():
        for _ in range(args.warmup):
            call(x)
        for _ in range(args.iters):
            start = time.perf_counter()
            call(x)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"lib": args.lib, "variant": args.variant, "size": size, "batch": args.batch, "warmup": args.warmup,
            "iters": args.iters, "images_per_s": args.batch / median, "times_s": times,
            "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(), "channels_last": channels_last}


def run_prewarm(args: argparse.Namespace) -> dict[str, Any]:
    """Make `--backend auto` measure and remember its choice for each batch size and dtype, now.

    The choice is stored in $EFFNET_CACHE; the timed contenders and CLI runs after this one read
    it instead of exporting and measuring inside the time being measured.
    """
    import json as json_

    from effnet_cli.hub import cache_root
    from effnet_cli.runtime.engine import Engine

    out: dict[str, Any] = {}
    for dtype in args.dtypes:
        for batch in args.batches:
            engine = Engine.from_pretrained(str(prepare.effnet_dir(args.variant)), device="cpu", backend="auto",
                                            dtype=dtype, batch_size=batch)
            out[f"{dtype}/{batch}"] = {"backend": engine.backend}
    # What each backend measured, from the remembered records (one per model, batch size and dtype).
    for record in sorted((cache_root() / "exports" / "auto").glob("*.json")):
        data = json_.loads(record.read_text())
        key = f"{data.get('dtype')}/{data.get('batch')}"
        if key in out and data.get("size", [0])[0] == prepare.VARIANTS[args.variant][0]:
            out[key]["measured"] = data.get("images_per_s")
    return {"variant": args.variant, "choices": out}


# ------------------------------------------------------------------ end to end
def _emit(path: str, scores: list[float], labels: list[Any]) -> None:
    sys.stdout.write(json.dumps({"path": path, "labels": labels, "scores": scores}) + "\n")


def _rgb_loader(path: str) -> Any:
    from PIL import Image

    with open(path, "rb") as fh:
        return Image.open(fh).convert("RGB")


class _Files:
    """A list of image paths as a torch Dataset of transformed tensors (what timm's inference script does)."""

    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        return self.transform(_rgb_loader(self.paths[i]))


def _loop_dataloader(model: Any, transform: Any, paths: list[str], batch: int, workers: int) -> None:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_Files(paths, transform), batch_size=batch, num_workers=workers, shuffle=False)
    done = 0
    with torch.inference_mode():
        for x in loader:
            probs = model(x.contiguous(memory_format=torch.channels_last)).softmax(-1)
            scores, idx = probs.topk(5, dim=-1)
            for s, i in zip(scores.tolist(), idx.tolist()):
                _emit(paths[done], s, i)
                done += 1
            sys.stdout.flush()


def run_e2e(args: argparse.Namespace) -> None:
    paths = Path(args.list).read_text().splitlines()
    if args.lib == "transformers":
        from transformers import pipeline

        from torch.utils.data import Dataset

        class Paths(Dataset):
            """The paths as a sized Dataset: the pipeline then streams results as batches finish and
            decodes in ``num_workers`` DataLoader workers (a generator would force one worker, a list
            would return everything at the end)."""

            def __len__(self) -> int:
                return len(paths)

            def __getitem__(self, i: int) -> str:
                return paths[i]

        pipe = pipeline("image-classification", model=str(prepare.hf_dir(args.variant)), device="cpu")
        results = pipe(Paths(), batch_size=args.batch, num_workers=args.workers, top_k=5)
        for path, preds in zip(paths, results):
            _emit(path, [p["score"] for p in preds], [p["label"] for p in preds])
            sys.stdout.flush()
    elif args.lib == "timm":
        import torch
        from timm.data import create_transform, resolve_data_config

        model = prepare.timm_model(args.variant).to(memory_format=torch.channels_last)
        transform = create_transform(**resolve_data_config({}, model=model))
        _loop_dataloader(model, transform, paths, args.batch, args.workers)
    elif args.lib in NUMPY_LIBS:
        # The runtime used directly, fed by effnet's processor in a DataLoader (as timm's script feeds timm).
        import torch
        from effnet_cli import load_pretrained

        _, processor = load_pretrained(str(prepare.effnet_dir(args.variant)))
        call = runtime_forward(args.lib, args.variant, args.batch)

        def model(x: Any) -> Any:
            out = call(x.contiguous().numpy())
            return torch.from_numpy(out if isinstance(out, np.ndarray) else np.concatenate(out))

        import numpy as np

        _loop_dataloader(model, processor.preprocess_pil, paths, args.batch, args.workers)
    elif args.lib == "torchvision":
        import torch
        import torchvision

        model = prepare.torchvision_model(args.variant).to(memory_format=torch.channels_last)
        enum_name = f"EfficientNet_{args.variant.upper()}_Weights"
        transform = getattr(torchvision.models, enum_name).IMAGENET1K_V1.transforms()  # a preset: no download
        _loop_dataloader(model, transform, paths, args.batch, args.workers)
    else:
        raise SystemExit(f"e2e: unknown lib {args.lib} (effnet runs as the real CLI)")
    sys.stderr.write(json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")


def run_decode(args: argparse.Namespace) -> dict[str, Any]:
    """effnet's decode pipeline alone (workers, draft decoding, preprocessing, batching): no model."""
    from effnet_cli.data import default_workers

    if args.lean:  # the torch-free pool of the lean engine, on the cached ONNX export of the same weights
        from effnet_cli.runtime.lean import LeanEngine

        engine: Any = LeanEngine(Path(onnx_file(args.variant)).parent, backend="onnxruntime")
    else:
        from effnet_cli.runtime.engine import Engine

        engine = Engine.from_pretrained(str(prepare.effnet_dir(args.variant)), device="cpu")
    paths = Path(args.list).read_text().splitlines()
    workers = default_workers()
    start, count = None, 0
    for i, batch in enumerate(engine.batches(paths, batch_size=args.batch, workers=workers)):
        if i == 0:
            start = time.perf_counter()  # after the workers started and delivered a first batch
            continue
        count += len(batch.indices)
    return {"variant": args.variant, "workers": workers, "images": count,
            "images_per_s": count / (time.perf_counter() - start)}


def _draft_options(processor: Any, margins: list[float]) -> tuple[list[dict[str, Any]], list[Callable[[str], Any]]]:
    """Exact decoding first, then every decoder, margin and resize: each as a description and a path -> tensor."""
    from effnet_cli.data import open_image

    side = processor.size["shortest_edge"]

    def option(decoder: str | None, margin: float | None, cropped: bool) -> Callable[[str], Any]:
        from decoders import open_simplejpeg, preprocess_cropped

        opener: Callable[..., Any] = open_simplejpeg if decoder == "simplejpeg" else open_image
        kwargs: dict[str, Any] = {} if decoder is None else {"draft_size": (round(margin * side),) * 2}
        if cropped:
            return lambda path: preprocess_cropped(processor, opener(path, **kwargs))
        return lambda path: processor.preprocess_pil(opener(path, **kwargs))

    try:
        import simplejpeg  # noqa: F401  (without it open_simplejpeg would quietly be Pillow's path)

        decoders = ("pillow", "simplejpeg")
    except ImportError:
        decoders = ("pillow",)
    options: list[dict[str, Any]] = [{"decoder": None, "margin": None, "cropped": False}]
    for margin in margins:
        for decoder in decoders:
            for cropped in (False, True):
                options.append({"decoder": decoder, "margin": margin, "cropped": cropped})
    return options, [option(o["decoder"], o["margin"], o["cropped"]) for o in options]


def _time_options(runs: list[Callable[[str], Any]], paths: list[str], rounds: int) -> list[list[float]]:
    """ms per image of each option in each round: one thread (what each decode worker gets), interleaved."""
    import random

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: list[list[float]] = [[] for _ in runs]
    rng = random.Random(0)
    for path in paths[:8]:  # warm up: file cache, lazy imports, first-call allocations
        for run in runs:
            run(path)
    for _ in range(rounds):
        spent = [0.0] * len(runs)
        order = list(range(len(runs)))
        for path in paths:
            rng.shuffle(order)
            for i in order:
                start = time.perf_counter()
                runs[i](path)
                spent[i] += time.perf_counter() - start
        for i, total in enumerate(spent):
            times[i].append(total / len(paths) * 1e3)
    torch.set_num_threads(threads)
    return times


def run_draft(args: argparse.Namespace) -> dict[str, Any]:
    """The fast-decode options against exact decoding, with the bundled Lite0 (real weights).

    Each option is the whole per-image path a decode worker runs (open, decode, resize, crop,
    tensor), timed on one thread. The machine is shared, so the options are interleaved image by
    image (every option decodes an image, in a shuffled order, before the next image): a burst of
    other work then lands on all of them alike. Each round gives each option a mean over all the
    images; the median round is kept. Top-1 flips are counted against exact decoding (full
    decode + the processor's own resize).
    """
    import torch

    import effnet_cli.runtime.engine as inference
    from effnet_cli import load_pretrained
    from effnet_cli.runtime.engine import Engine

    model, processor = load_pretrained("lite0")
    samples = sorted(str(p) for p in prepare.SAMPLES.glob("*.jpg"))
    paths = samples + Path(args.list).read_text().splitlines()
    side = processor.size["shortest_edge"]
    options, runs = _draft_options(processor, args.margins)
    times = _time_options(runs, paths, args.rounds)

    # Top-1 (and the top-2 gap) per option, from the model on the same pixels.
    engine = Engine(model, processor, device="cpu", draft=False)

    def top1(run: Callable[[str], Any]) -> list[tuple[int, float]]:
        out = []
        for first in range(0, len(paths), 32):
            batch = torch.stack([run(p) for p in paths[first:first + 32]])
            for preds in engine.topk(batch, 2):
                out.append((preds[0].index, preds[0].score - preds[1].score))
        return out

    exact = top1(runs[0])
    rows = []
    for o, run, ms in zip(options, runs, times):
        got = exact if run is runs[0] else top1(run)
        flips = [(Path(paths[i]).name, exact[i][1], i < len(samples)) for i in range(len(paths))
                 if got[i][0] != exact[i][0]]
        rows.append({**o, "draft_size": None if o["margin"] is None else round(o["margin"] * side),
                     "ms": statistics.median(ms), "ms_rounds": ms, "images": len(paths), "flips": len(flips),
                     "flipped": flips, "max_gap": max((g for _, g, _ in flips), default=None)})
    return {"rounds": args.rounds, "rows": rows,
            "default": {"decoder": "pillow", "margin": inference.DRAFT_MARGIN, "cropped": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    fwd = sub.add_parser("forward")
    fwd.add_argument("--lib", choices=LIBS, required=True)
    fwd.add_argument("--variant", choices=sorted(prepare.VARIANTS), required=True)
    fwd.add_argument("--batch", type=int, required=True)
    fwd.add_argument("--warmup", type=int, default=2)
    fwd.add_argument("--iters", type=int, default=10)
    fwd.add_argument("--thread-policy", choices=("cli", "torch"), default="cli",
                     help="effnet's Engine rows: the CLI's OpenMP waiting policy (default) or torch's own")
    serve = sub.add_parser("serve-forward", help="a runtime contender timed on request (lines N on stdin)")
    serve.add_argument("--lib", choices=NUMPY_LIBS, required=True)
    serve.add_argument("--variant", choices=sorted(prepare.VARIANTS), required=True)
    serve.add_argument("--batch", type=int, required=True)
    serve.add_argument("--warmup", type=int, default=3)
    cost = sub.add_parser("call-cost", help="the API call's own cost around ONNX Runtime, in µs")
    cost.add_argument("--variant", choices=sorted(prepare.VARIANTS), required=True)
    cost.add_argument("--batch", type=int, default=1)
    e2e = sub.add_parser("e2e")
    e2e.add_argument("--lib", choices=LIBS, required=True)
    e2e.add_argument("--variant", choices=sorted(prepare.VARIANTS), required=True)
    e2e.add_argument("--batch", type=int, default=16)
    e2e.add_argument("--workers", type=int, default=2)
    e2e.add_argument("--list", required=True, help="file with one image path per line")
    dec = sub.add_parser("decode")
    dec.add_argument("--variant", choices=sorted(prepare.VARIANTS), required=True)
    dec.add_argument("--batch", type=int, default=16)
    dec.add_argument("--list", required=True, help="file with one image path per line")
    dec.add_argument("--lean", action="store_true", help="the lean engine's torch-free decode workers")
    warm = sub.add_parser("prewarm")
    warm.add_argument("--variant", choices=sorted(prepare.VARIANTS), required=True)
    warm.add_argument("--batches", type=int, nargs="+", default=[16])
    warm.add_argument("--dtypes", nargs="+", default=["float32"])
    draft = sub.add_parser("draft")
    draft.add_argument("--list", required=True, help="file with one image path per line")
    draft.add_argument("--margins", type=float, nargs="+", default=[2.0, 1.5, 1.0])
    draft.add_argument("--rounds", type=int, default=5, help="interleaved timing passes per option")
    args = parser.parse_args()
    cli_policy = getattr(args, "thread_policy", "cli") == "cli"
    if (cli_policy and getattr(args, "lib", "").startswith(("effnet-auto", "effnet-engine"))) or args.what == "prewarm":
        # What the CLI runs (its default backend, and `--backend torch`): its thread policy is set before
        # torch loads (effnet_cli.cli.app.main).
        from effnet_cli.cli.app import _thread_waiting_policy

        _thread_waiting_policy()
    if args.what == "forward":
        print(json.dumps(run_forward(args)))
    elif args.what == "serve-forward":
        serve_forward(args)
    elif args.what == "call-cost":
        print(json.dumps(run_call_cost(args)))
    elif args.what == "decode":
        print(json.dumps(run_decode(args)))
    elif args.what == "prewarm":
        print(json.dumps(run_prewarm(args)))
    elif args.what == "draft":
        print(json.dumps(run_draft(args)))
    else:
        run_e2e(args)


if __name__ == "__main__":
    main()
