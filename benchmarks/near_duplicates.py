"""The near-duplicate benchmark: `effnet dedupe` against imagededup's perceptual hashes, on the same files.

The set (built here, nothing downloaded): distinct pictures are two regions of each source photo (the
sample photos and scikit-image's bundled ones), so each picture has a hard negative of the same
subject, light and camera; the stereo motorcycle pair and the brick/grass/gravel textures add more.
Each picture gets altered copies at two strengths: re-encoded (JPEG q50 / q20), resized (0.75 / 0.4),
cropped (95% / 85%), brightened (1.15 / 1.4). Pairs are scored pairwise (every two files of one
predicted group against every two copies of one picture). Run:

    python benchmarks/near_duplicates.py --out /tmp/near-dups --json results.json

Needs ``pip install imagededup scikit-image`` (its hash methods and its bundled photos; neither downloads
anything at run time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import warnings
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "images"
# coffee.png is the sample espresso.jpg: left out, or one picture would count as two.
SKIMAGE = ("hubble_deep_field", "retina", "motorcycle_left", "motorcycle_right", "coins", "moon", "page",
           "brick", "grass", "gravel", "ihc", "clock_motion", "text", "microaneurysms", "cell", "logo")
STRENGTHS = {"mild": (50, 0.75, 0.95, 1.15), "strong": (20, 0.4, 0.85, 1.4)}


def sources() -> dict[str, Image.Image]:
    """The source photos, RGB."""
    import skimage.data

    found = {p.stem: Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))}
    bundled = Path(skimage.data.__file__).parent  # the files in the wheel, never the fetcher's downloads
    for name in SKIMAGE:
        path = next(bundled.glob(f"{name}.*"))
        found[name] = Image.open(path).convert("RGB")
    return found


def altered(picture: Image.Image) -> dict[str, tuple[Image.Image, int]]:
    """The altered copies of one picture and the JPEG quality each is saved at."""
    w, h = picture.size
    out = {}
    for strength, (quality, scale, crop, bright) in STRENGTHS.items():
        dx, dy = int(w * (1 - crop) / 2), int(h * (1 - crop) / 2)
        out[f"reencoded-{strength}"] = (picture, quality)
        out[f"resized-{strength}"] = (picture.resize((max(int(w * scale), 16), max(int(h * scale), 16))), 90)
        out[f"cropped-{strength}"] = (picture.crop((dx, dy, w - dx, h - dy)), 90)
        out[f"brighter-{strength}"] = (ImageEnhance.Brightness(picture).enhance(bright), 90)
    return out


def build_set(folder: Path) -> dict[str, str]:
    """Write the set into ``folder``; file name -> picture id."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name, photo in sources().items():
        w, h = photo.size
        regions = {"a": (0, 0, int(w * 0.55), int(h * 0.55)), "b": (int(w * 0.45), int(h * 0.45), w, h)}
        for region, box in regions.items():
            picture, pid = photo.crop(box), f"{name}-{region}"
            picture.save(folder / f"{pid}.jpg", quality=95)
            truth[f"{pid}.jpg"] = pid
            for kind, (image, quality) in altered(picture).items():
                image.save(folder / f"{pid}~{kind}.jpg", quality=quality)
                truth[f"{pid}~{kind}.jpg"] = pid
    return truth


def true_pairs(truth: dict[str, str]) -> set[frozenset[str]]:
    by_picture: dict[str, list[str]] = {}
    for name, pid in truth.items():
        by_picture.setdefault(pid, []).append(name)
    return {frozenset(p) for names in by_picture.values() for p in itertools.combinations(names, 2)}


def scores(predicted: set[frozenset[str]], truth: set[frozenset[str]]) -> dict[str, float]:
    hit = len(predicted & truth)
    precision = hit / len(predicted) if predicted else 1.0
    recall = hit / len(truth)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted_pairs": len(predicted)}


def effnet_run(folder: Path, truth: dict[str, str], features: str) -> dict[str, Any]:
    """Index the set with the bundled lite0, then dedupe at each threshold; search recall@1 of the copies."""
    from effnet_cli.similar import Index
    from effnet_cli.similar.groups import find_groups
    from effnet_cli.similar.search import top_k

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index = Index.build([folder], Path(tmp) / "idx", features=features, workers=2)
        seconds = time.perf_counter() - start
        stored = index._stored
        names = [Path(e.path).name for e in stored.entries]
        pairs = true_pairs(truth)
        sweep = {}
        for t in np.round(np.arange(0.60, 0.99, 0.01), 2):
            groups = find_groups(stored.vectors, stored.entries, threshold=float(t))
            predicted = {frozenset((Path(a.path).name, Path(b.path).name))
                         for g in groups for a, b in itertools.combinations(g.members, 2)}
            sweep[f"{t:.2f}"] = scores(predicted, pairs)
        copies = [i for i, n in enumerate(names) if "~" in n]
        rows, _ = top_k(stored.vectors, np.asarray(stored.vectors[copies]), 1, copies)
        right = sum(truth[names[r[0]]] == truth[names[i]] for i, r in zip(copies, rows))
    return {"sweep": sweep, "seconds_per_1000": 1000 * seconds / len(names), "recall_at_1": right / len(copies),
            "copies": len(copies)}


def imagededup_run(folder: Path, truth: dict[str, str]) -> dict[str, Any]:
    """PHash, DHash and WHash (imagededup, offline), each at every Hamming threshold 0-20; encode+search time."""
    from imagededup.methods import DHash, PHash, WHash

    pairs, out = true_pairs(truth), {}
    for method in (PHash, DHash, WHash):
        hasher = method(verbose=False)
        start = time.perf_counter()
        encodings = hasher.encode_images(image_dir=str(folder))
        hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=10)
        seconds = time.perf_counter() - start
        sweep = {}
        for t in range(0, 21):
            found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=t)
            predicted = {frozenset((a, b)) for a, dups in found.items() for b in dups}
            sweep[str(t)] = scores(predicted, pairs)
        out[method.__name__] = {"sweep": sweep, "seconds_per_1000": 1000 * seconds / len(truth)}
    return out


def best(sweep: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    return max(sweep.items(), key=lambda kv: kv[1]["f1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()) / "near-dups")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    truth = build_set(args.out)
    print(f"{len(truth)} files, {len(set(truth.values()))} pictures", flush=True)
    logging.disable(logging.INFO)  # imagededup logs every step
    warnings.simplefilter("ignore")
    effnet = {features: effnet_run(args.out, truth, features) for features in ("layout", "head")}
    hashes = imagededup_run(args.out, truth)
    from effnet_cli.similar.groups import default_threshold

    for features, result in effnet.items():
        t, row = best(result["sweep"])
        default = result["sweep"][f"{default_threshold(features):.2f}"]
        print(f"effnet dedupe {features:<6} best threshold {t}: P {row['precision']:.3f} R {row['recall']:.3f} "
              f"F1 {row['f1']:.3f}; at the default {default_threshold(features):.2f}: P {default['precision']:.3f} "
              f"R {default['recall']:.3f} F1 {default['f1']:.3f}; {result['seconds_per_1000']:.1f} s/1000 images; "
              f"search recall@1 of {result['copies']} copies {result['recall_at_1']:.3f}")
    for name, result in hashes.items():
        t, row = best(result["sweep"])
        print(f"imagededup {name:<6} best threshold {t:>2}: P {row['precision']:.3f} R {row['recall']:.3f} "
              f"F1 {row['f1']:.3f}; {result['seconds_per_1000']:.1f} s/1000 images")
    if args.json:
        args.json.write_text(json.dumps({"files": len(truth), "effnet": effnet, "imagededup": hashes}, indent=1))


if __name__ == "__main__":
    main()
