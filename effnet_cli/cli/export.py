"""``effnet export``: a model effnet loads -> an ONNX or OpenVINO model other runtimes run."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.render import EXIT_OK, stdout_console
from effnet_cli.errors import InputError


class ExportFormat(str, Enum):
    onnx = "onnx"
    openvino = "openvino"


def _parse_batch(text: str) -> int | None:
    if text == "dynamic":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise InputError(f"--batch must be 'dynamic' or a positive number, got {text!r}.")


def _check_arguments(output: Path, format: ExportFormat, dtype: opt.DType, batch: str,
                     verify: list[str] | None, overwrite: bool) -> int | None:
    """The usage errors the arguments alone decide; the fixed batch size (None: dynamic)."""
    from effnet_cli.cli.common import require_inputs
    from effnet_cli.output import EXPORT_DIR_FILES, owned_by
    from effnet_cli.output.targets import check_dir

    # A directory that holds anything is refused; --overwrite replaces one that holds only an earlier export.
    check_dir(output, "-o", overwrite=overwrite, own=owned_by(output, EXPORT_DIR_FILES))
    if format is ExportFormat.onnx and dtype is opt.DType.bfloat16:
        # The same refusal as effnet_cli.runtime.export's, made here without importing the exporter.
        raise InputError("ONNX Runtime has no bfloat16 convolutions on the CPU; export float32 (or float16), "
                         "or use --format openvino, which computes in bfloat16 where the CPU supports it.")
    fixed = _parse_batch(batch)
    if verify:
        require_inputs(verify)
    return fixed


def export(
    model: Annotated[str, typer.Argument(help="Variant (lite0, b0-b7), hub id, or directory (e.g. from effnet convert).",
                                         show_default=False, metavar="MODEL")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to create: the model file, config.json "
                                                                "and preprocessor_config.json.", show_default=False,
                                         metavar="DIR")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx (model.onnx) or openvino "
                                                                         "(model.xml + model.bin).")] = ExportFormat.onnx,
    dtype: Annotated[opt.DType, typer.Option(
        "--dtype", help="float32; float16 (half-size weights); bfloat16 (openvino: computes in bf16 where the CPU "
                        "supports it).")] = opt.DType.float32,
    batch: Annotated[str, typer.Option("--batch", help="'dynamic' (any batch size) or a fixed batch size.",
                                       metavar="N|dynamic")] = "dynamic",
    image_size: Annotated[Optional[str], typer.Option(
        "--image-size", help="Input size N or HxW; preprocessing is adjusted to match. [default: the model's]",
        show_default=False, metavar="N|HxW")] = None,
    verify: Annotated[Optional[list[str]], typer.Option(
        "--verify", help="Images (files, directories or globs) to run through the export in its runtime and "
                         "through the PyTorch model; prints the largest difference per output.",
        show_default=False, metavar="IMAGES")] = None,
    revision: opt.Revision = None,
    overwrite: opt.Overwrite = False,
) -> int:
    """Export a model to ONNX or OpenVINO, with its preprocessing beside it.

    Examples:

      effnet export lite0 -o lite0-onnx/ --verify tests/data/images/

      effnet export google/efficientnet-b3 -o b3-ov/ --format openvino --dtype bfloat16

    model.onnx runs in plain ONNX Runtime: input "pixel_values" (N×3×H×W float32, as
    preprocessor_config.json describes), outputs "logits", "features" (mean-pooled) and
    "features_max". See docs/export.md.
    """
    fixed = _check_arguments(output, format, dtype, batch, verify, overwrite)  # before any model, runtime or torch import
    from effnet_cli.data import discover_inputs
    from effnet_cli.runtime.export import export_model, parse_image_size, sample_pixels, verify_export
    from effnet_cli.core.loading import load_pretrained

    size = parse_image_size(image_size)
    images = discover_inputs(verify) if verify else None
    net, processor = load_pretrained(model, revision=revision)
    result = export_model(net, processor, output, fmt=format.value, dtype=dtype.value, batch=fixed, image_size=size,
                          overwrite=overwrite)
    console = stdout_console()
    h, w = result.image_size
    shape = f"{result.batch or 'N'}×3×{h}×{w}"
    console.print(f"exported {model} -> {output} ({result.format}, {result.dtype}, input {shape}, outputs "
                  f"{', '.join(result.outputs)})", markup=False, highlight=False, soft_wrap=True)
    console.print("files: " + ", ".join(p.name for p in result.files), markup=False, highlight=False, soft_wrap=True)
    if images:
        from effnet_cli.runtime.export import processor_for_size

        pixels = sample_pixels(processor_for_size(processor, size), images)
        report = verify_export(result, net, pixels)
        runtime = "ONNX Runtime" if result.format == "onnx" else "OpenVINO"
        console.print(f"verify: {runtime} vs PyTorch on {report.images} images", markup=False, highlight=False, soft_wrap=True)
        for name in result.outputs:
            console.print(f"  {name}: max abs diff {report.max_abs[name]:.3g}, relative {report.max_rel[name]:.3g}",
                          markup=False, highlight=False, soft_wrap=True)
        if report.top1_equal is not None:
            console.print(f"  top-1 equal: {report.top1_equal}/{report.images}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK
