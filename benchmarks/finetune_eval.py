"""Measure `effnet finetune` on a real labelled dataset that ships inside a package: scikit-learn's digits.

scikit-learn bundles the UCI handwritten digits (1,797 real 8×8 greyscale scans,
10 classes) in its wheel, so nothing is downloaded. This script writes a
seeded subset of them as PNG files in the image-folder layout (train/ and
val/, stratified), then times and scores:

1. the linear probe: ``effnet_cli.finetune(..., freeze="backbone")`` with its defaults;
2. full fine-tuning with the defaults: ``effnet_cli.finetune(...)``;
3. the baseline anyone could do by hand: ``effnet embed`` on train/ and val/,
   then scikit-learn's ``LogisticRegression`` (default settings) on those features.

Usage (needs the ``eval`` extra: scikit-learn):

    python benchmarks/finetune_eval.py --work /tmp/digits-eval [--per-class 125] [--full freeze=6,epochs=6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def materialise(root: Path, per_class: int, val_fraction: float, seed: int) -> tuple[Path, Path]:
    """Write ``per_class`` digits of each class as PNGs under root/train/<digit>/ and root/val/<digit>/."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for part in ("train", "val"):
        shutil.rmtree(root / part, ignore_errors=True)
    for label in range(10):
        members = np.flatnonzero(digits.target == label)
        chosen = rng.permutation(members)[:per_class]
        n_val = round(len(chosen) * val_fraction)
        for k, i in enumerate(chosen):
            part = "val" if k < n_val else "train"
            folder = root / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            # Values are 0..16 ink; as a photo it is dark ink on white paper.
            pixels = (255 - digits.images[i] * (255 / 16)).round().astype("uint8")
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return root / "train", root / "val"


def parse_overrides(text: str | None) -> dict:
    out: dict = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_finetune(train: Path, val: Path, out: Path, **options) -> dict:
    import effnet_cli

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = effnet_cli.finetune(str(train), str(out), val=str(val), **options)
    seconds = time.perf_counter() - start
    v = result.metrics["validation"]
    return {"top1": v["top1"], "top5": v["top5"], "seconds": seconds, "options": options,
            "train_images": result.metrics["train_images"], "val_images": result.metrics["val_images"]}


def embed(folder: Path, out: Path) -> tuple[list, list]:
    """`effnet embed` on one folder; returns feature rows and the class (folder name) of each."""
    import numpy as np

    subprocess.run([sys.executable, "-m", "effnet_cli", "embed", str(folder), "-o", str(out), "--quiet"], check=True)
    rows = np.load(out)
    labels = []
    with open(out.with_suffix(".jsonl"), encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            labels.append(Path(record["path"]).parent.name)
    return rows, labels


def baseline(train: Path, val: Path, work: Path) -> dict:
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    x_train, y_train = embed(train, work / "train_feats.npy")
    x_val, y_val = embed(val, work / "val_feats.npy")
    clf = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    top1 = float((clf.predict(x_val) == y_val).mean())
    return {"top1": top1, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (dataset and outputs)")
    parser.add_argument("--per-class", type=int, default=125, help="images per class (the digits have ~180)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", help="overrides for the linear probe, e.g. epochs=100,lr=0.01")
    parser.add_argument("--full", help="overrides for full fine-tuning, e.g. freeze=4,epochs=6")
    parser.add_argument("--skip", default="", help="comma-separated: probe, full, baseline")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    train, val = materialise(args.work, args.per_class, args.val_fraction, args.seed)
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    skip = set(args.skip.split(","))
    results = {}
    if "probe" not in skip:
        results["linear probe"] = run_finetune(train, val, args.work / "probe", freeze="backbone",
                                               **parse_overrides(args.probe))
        print("linear probe", json.dumps(results["linear probe"]), flush=True)
    if "full" not in skip:
        results["fine-tune"] = run_finetune(train, val, args.work / "full", **parse_overrides(args.full))
        print("fine-tune", json.dumps(results["fine-tune"]), flush=True)
    if "baseline" not in skip:
        results["baseline"] = baseline(train, val, args.work)
        print("baseline", json.dumps(results["baseline"]), flush=True)
    print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'run':<14} {'val top-1':>9} {'seconds':>8}")
    for name, r in results.items():
        print(f"{name:<14} {r['top1']:>9.4f} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
