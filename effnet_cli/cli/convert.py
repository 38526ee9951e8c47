"""``effnet convert``: another library's EfficientNet checkpoint -> a directory effnet loads."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from effnet_cli.cli.render import EXIT_OK, info_line, stdout_console


class Source(str, Enum):
    hf = "hf"
    torchvision = "torchvision"
    timm = "timm"
    efficientnet_pytorch = "efficientnet_pytorch"
    keras = "keras"


def _check_arguments(src: Path, output: Path, overwrite: bool) -> None:
    """The usage errors the arguments alone decide: a missing checkpoint, an output convert must not write."""
    from effnet_cli.errors import InputError
    from effnet_cli.output import MODEL_DIR_FILES, owned_by
    from effnet_cli.output.targets import check_dir
    from effnet_cli.records.pathtext import display_path

    if not src.exists():
        raise InputError(f"{display_path(src)}: no such file or directory.")
    # --overwrite replaces a directory that holds only what convert writes.
    check_dir(output, "-o", overwrite=overwrite, own=owned_by(output, MODEL_DIR_FILES))


def convert(
    src: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="Checkpoint file (.safetensors, .pth, .bin, .h5) or transformers directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Directory to write (config.json, model.safetensors, preprocessor_config.json).")],
    source: Annotated[Optional[Source], typer.Option("--from", help="Source library; detected from the key layout when omitted.", show_default=False)] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", metavar="NAME", help="Source architecture where the file can't tell, e.g. tf_efficientnet_b3, efficientnet-b2, EfficientNetB0.")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Run the source library (if installed) and the converted model on the same input; print the largest difference.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it already holds files.")] = False,
) -> int:
    """Convert a torchvision, timm, efficientnet_pytorch, Keras or transformers checkpoint.

    Examples:

      effnet convert tf_efficientnet_b3.safetensors --from timm --arch tf_efficientnet_b3 -o b3/

      effnet convert efficientnet_b0_rwightman-7f5810bc.pth --from torchvision --arch efficientnet_b0 -o tv-b0/ --verify

    The output directory loads with `effnet classify --model DIR` and load_pretrained(DIR).
    """
    _check_arguments(src, output, overwrite)  # before any model or torch import
    from effnet_cli.convert import convert_checkpoint

    report = convert_checkpoint(src, output, source=source.value if source else None, arch=arch, verify=verify,
                                overwrite=overwrite)
    console = stdout_console()
    console.print(f"converted {src} ({report.source}, {report.arch}, {report.num_tensors} tensors) -> {output}",
                  markup=False, highlight=False, soft_wrap=True)
    for note in report.notes:
        info_line(note)
    if report.verify is not None:
        console.print(f"verify: {report.verify}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK
