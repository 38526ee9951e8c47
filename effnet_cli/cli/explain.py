"""``effnet explain``: class-activation heatmaps (overlay PNG + raw ``.npy``) and a jsonl record per image."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.common import gather_inputs, probe_hub_early, require_inputs
from effnet_cli.cli.render import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    error_line,
    progress_bar,
    progress_enabled,
    summary_line,
    utf8_stdout,
)
from effnet_cli.explain.methods import DEFAULT_METHOD, METHODS, check_method, require_library
from effnet_cli.records.pathtext import display_path

ExplainDir = Annotated[Path, typer.Option(
    "--output", "-o", metavar="DIR", show_default=False,
    help="Directory for the files: per image and class, IMAGE.CLASS.png (the overlay) and IMAGE.CLASS.npy "
         "(the heatmap), named after the input's path.")]


def explain(
    inputs: opt.Inputs,
    output: ExplainDir,
    classes: Annotated[Optional[list[str]], typer.Option(
        "--class", "-c", metavar="LABEL|INDEX", show_default=False,
        help="Explain this class (a label or an index; repeat for several) instead of the image's top ones.")] = None,
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="Explain the image's N most likely classes.")] = 1,
    method: Annotated[str, typer.Option(
        "--method", "-m", metavar="NAME", help=f"CAM method: {', '.join(METHODS)}.")] = DEFAULT_METHOD,
    overwrite: opt.Overwrite = False,
    null: opt.Null = False,
    max_pixels: opt.MaxPixels = None,
    decode_timeout: opt.DecodeTimeout = None,
    variant: opt.VariantOpt = None,
    model: opt.ModelOpt = None,
    revision: opt.Revision = None,
    device: opt.Device = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 8,
    quiet: opt.Quiet = False,
    progress: opt.Progress = None,
) -> int:
    """Show which pixels made the model choose a class: a heatmap per image and class.

    Examples:

      effnet explain photos/cat.jpg -o heat/

      effnet explain photos/*.jpg -o heat/ --top 3 --method gradcam++

      effnet explain photos/cat.jpg -o heat/ --class "tabby, tabby cat" --class 285

    Writes, for each image and explained class, IMAGE.CLASS.png (the heatmap blended on the photo at
    its own size, the class and score written on it) and IMAGE.CLASS.npy (H×W float32 in [0, 1]),
    and prints one jsonl record per image (its top classes and the files) on stdout. Needs
    pytorch-grad-cam (pip install 'effnet-cli[explain]').
    Exit status: 0 all images explained, 1 some failed (each gets an error record), 2 usage error.
    """
    from effnet_cli.data.limits import check_input_limits, option_time_limit

    started = time.monotonic()
    method = check_method(method)
    check_input_limits(max_pixels, decode_timeout)  # usage errors, before anything loads
    time_limit = option_time_limit(decode_timeout)
    _check_output(inputs, output, overwrite, model is not None and variant is not None)
    require_library()  # before torch: a missing library costs nothing
    probe_hub_early(variant, model)
    from effnet_cli.cli.sharded import output_lock

    with output_lock("explain", per_file=output):
        paths = gather_inputs(inputs, null)
        _check_output(inputs, output, overwrite, False, paths)  # again under the lock, with the inputs' names
        return _run(paths, output, classes or [], top, method, variant.value if variant is not None else model,
                    revision, device, batch_size, max_pixels, time_limit, progress_enabled(progress, quiet), quiet,
                    started)


def _check_output(inputs: list[str], output: Path, overwrite: bool, both_models: bool,
                  paths: list[str] | None = None) -> None:
    """The usage errors the arguments decide: -o's directory (new, empty, or --overwrite) and, with the
    inputs' list, two inputs that would write the same file."""
    from effnet_cli.errors import InputError
    from effnet_cli.output.targets import check_dir
    from effnet_cli.records.manifest import per_file_targets

    require_inputs(inputs)
    if both_models:
        raise InputError("Give either --variant or --model, not both.")
    # --overwrite replaces this command's own files (.png, .npy) and folders of them; nothing is deleted.
    check_dir(output, "-o", overwrite=overwrite, own=lambda name: name.endswith((".png", ".npy"))
              or (output / name).is_dir())
    if paths is not None:
        per_file_targets(output, paths, ".png", option="explain -o", instead="")


def _run(paths: list[str], output: Path, classes: list[str], top: int, method: str, name: str | None,
         revision: str | None, device: str, batch_size: int, max_pixels: int | None, time_limit: float | None,
         show: bool, quiet: bool, started: float) -> int:
    """Load the model, explain every input, print the records; the exit status."""
    from effnet_cli.core.loading import load_pretrained
    from effnet_cli.data.decode import option_pixel_limit
    from effnet_cli.explain.run import ExplainSettings, class_indices, explain_paths
    from effnet_cli.runtime.fused import resolve_device
    from effnet_cli.runtime.paths import require_classifier

    where = resolve_device(device)
    loaded, processor = load_pretrained(name or opt.DEFAULT_VARIANT, revision=revision)
    require_classifier(loaded)
    labels = [loaded.config.id2label.get(i, f"LABEL_{i}") for i in range(loaded.config.num_labels)]
    settings = ExplainSettings(directory=output, method=method, classes=class_indices(classes, labels), top=top,
                               batch_size=batch_size, decode_timeout=time_limit,
                               max_pixels=option_pixel_limit(max_pixels))
    utf8_stdout()
    failed = 0
    with progress_bar(len(paths), show, "explain") as advance:
        for record in explain_paths(loaded, processor, paths, settings, where):
            if "error" in record:
                failed += 1
                if not quiet:
                    error_line(f"{record['path']}: {record['error']}")
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()  # a record is out as soon as its image's files are written
            advance(1)
    summary_line("explained", len(paths), failed, f"files in {display_path(output)}/, records on stdout",
                 time.monotonic() - started, quiet)
    return EXIT_SOME_FAILED if failed else EXIT_OK

