"""How often each backend and dtype keeps PyTorch float32's top-1 class, on camera-sized JPEGs.

    python benchmarks/bf16_agreement.py [--images DIR] [--json]

With the bundled Lite0 (real ImageNet weights) and exact decoding, the five
sample photos plus the 256 camera-sized JPEGs of ``prepare.camera_jpegs(256)``
(random crops of the sample photos, so many near-ties) go through the plain
PyTorch model in float32 (the reference) and through every backend/dtype that
is installed: ONNX Runtime float32, OpenVINO float32, OpenVINO bfloat16 (when
this CPU has native bfloat16), torch bfloat16 (``optimize(dtype=bfloat16)``).
For each it counts the images whose top-1 class equals the reference's, and
lists each flipped image with the gap between the reference's two highest
probabilities (a flip at a gap of 0.001 is a near-tie; one at 0.3 is a bug).

``measure(paths)`` returns the figures as a dict, ``render(result)`` the
markdown table docs/export.md shows. Prints the table (or, with ``--json``,
the dict).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prepare  # noqa: E402

BATCH = 16
LABELS = {
    ("onnxruntime", "float32"): "ONNX Runtime, float32",
    ("openvino", "float32"): "OpenVINO, float32",
    ("openvino", "bfloat16"): "OpenVINO, bfloat16",
    ("torch", "bfloat16"): "torch, bfloat16",
    ("openvino-direct", "bfloat16"): "OpenVINO used directly, bfloat16 (every layer)",
}


def default_paths() -> list[Path]:
    """The five sample photos, then the 256 camera-sized JPEGs (made once, git-ignored)."""
    return sorted(prepare.SAMPLES.glob("*.jpg")) + prepare.camera_jpegs(256)


def _variants() -> list[tuple[str, str]]:
    """The (backend, dtype) pairs this installation can run, in table order."""
    from effnet_cli.runtime.backends import _openvino_bf16, installed

    found = []
    if installed("onnxruntime"):
        found.append(("onnxruntime", "float32"))
    if installed("openvino"):
        found.append(("openvino", "float32"))
        if _openvino_bf16():
            found.append(("openvino", "bfloat16"))
    found.append(("torch", "bfloat16"))
    return found


def _logits(run: Any, pixels: Any) -> Any:
    """``run`` over ``pixels`` in batches of :data:`BATCH`, concatenated (float32)."""
    import torch

    with torch.inference_mode():
        return torch.cat([run(pixels[i:i + BATCH]).float() for i in range(0, len(pixels), BATCH)])


def _openvino_direct_bf16(model: Any, processor: Any) -> Any:
    """effnet's cached OpenVINO IR compiled with bfloat16 inference precision and nothing else."""
    import openvino as ov

    from effnet_cli.runtime.cache import cached_export
    from effnet_cli.runtime.export import model_file

    compiled = ov.Core().compile_model(str(model_file(cached_export(model, processor, "openvino"), "openvino")),
                                       "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return lambda x: compiled(x)[compiled.output("logits")]


def measure(paths: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Top-1 agreement of every installed backend/dtype with PyTorch float32, Lite0, exact decoding."""
    import torch

    from effnet_cli.runtime.export import sample_pixels
    from effnet_cli.hub import load_pretrained
    from effnet_cli.runtime.engine import Engine

    paths = [Path(p) for p in (paths if paths is not None else default_paths())]
    model, processor = load_pretrained("lite0")
    pixels = sample_pixels(processor, paths)  # exact decoding: the reference and every backend see the same pixels
    reference = _logits(lambda x: model(x).logits, pixels)
    probs = torch.softmax(reference, dim=-1).topk(2, dim=-1).values
    want = reference.argmax(-1)
    def row(backend: str, dtype: str, got: Any) -> dict[str, Any]:
        flipped = (got.argmax(-1) != want).nonzero().flatten().tolist()
        return {"backend": backend, "dtype": dtype, "equal": len(paths) - len(flipped), "total": len(paths),
                "max_abs_logit_diff": float((got - reference).abs().max()),
                "flips": [{"image": paths[i].name, "top2_gap": round(float(probs[i, 0] - probs[i, 1]), 4)}
                          for i in flipped]}

    rows = []
    for backend, dtype in _variants():
        engine = Engine(model, processor, device="cpu", backend=backend, dtype=dtype)
        rows.append(row(backend, dtype, _logits(engine.logits, pixels)))
        if (backend, dtype) == ("openvino", "bfloat16"):
            # For comparison: OpenVINO compiled as its documentation shows, bfloat16 everywhere, without the
            # float32 stem and first stage effnet keeps.
            direct = _openvino_direct_bf16(model, processor)
            rows.append(row("openvino-direct", dtype, _logits(lambda x: torch.from_numpy(direct(x.numpy())), pixels)))
    return {"model": "lite0", "decoding": "exact", "images": len(paths), "rows": rows}


def render(result: dict[str, Any]) -> str:
    """The markdown table of :func:`measure`'s result."""
    lines = ["| backend, dtype | top-1 equal | largest logit difference | flipped images (top-2 probability gap) |",
             "| --- | ---: | ---: | --- |"]
    for row in result["rows"]:
        share = 100 * row["equal"] / row["total"]
        flips = ", ".join(f"{f['image']} ({f['top2_gap']:.4f})" for f in row["flips"]) or "none"
        lines.append(f"| {LABELS[(row['backend'], row['dtype'])]} | {row['equal']}/{row['total']} ({share:.1f}%) | "
                     f"{row['max_abs_logit_diff']:.3g} | {flips} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="a directory of JPEGs instead of the sample photos + camera-256")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    args = parser.parse_args(argv)
    paths = sorted(args.images.glob("*.jpg")) if args.images else None
    result = measure(paths)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
