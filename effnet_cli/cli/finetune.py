"""``effnet finetune``: train a classifier for your own labels; progress and the final report on stderr."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.render import EXIT_INTERRUPTED, EXIT_OK, error_line, info_line, progress_enabled, stderr_console
from effnet_cli.errors import InputError

TRAIN_PANEL = "Training"


class Augment(str, Enum):
    standard = "standard"
    crop = "crop"
    none = "none"


class TrainDType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


TrainDTypeOpt = Annotated[TrainDType, typer.Option(
    "--dtype", help="float32, or bfloat16 autocast (pays off on GPUs and CPUs with bfloat16 units).",
    rich_help_panel=opt.RUN_PANEL)]
TrainWorkers = Annotated[Optional[int], typer.Option(
    "--workers", "-j", min=0, help="Decode processes (0 decodes in the main process). [default: up to 2]",
    rich_help_panel=opt.RUN_PANEL, show_default=False)]


def finetune(
    data: Annotated[Path, typer.Argument(
        help="A directory with one folder of images per class (folder names become labels), "
             "or a .csv/.jsonl of path,label rows.", show_default=False, metavar="DATA")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Directory for the trained model (config.json, model.safetensors, "
                               "preprocessor_config.json), metrics.jsonl, errors.jsonl and the report.",
        show_default=False, metavar="DIR")],
    val: Annotated[Optional[Path], typer.Option(
        "--val", help="Validation set, laid out like DATA (same classes). [default: --val-split of DATA]",
        rich_help_panel=TRAIN_PANEL, show_default=False)] = None,
    val_split: Annotated[float, typer.Option(
        "--val-split", help="Share of each class held out for validation (stratified, seeded); 0 for none.",
        rich_help_panel=TRAIN_PANEL)] = 0.2,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", min=1, help="Passes over the training images. [default: 5; 60 with --freeze backbone]",
        rich_help_panel=TRAIN_PANEL, show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Peak learning rate (AdamW, after the warm-up). [default: 0.001; 0.005 with --freeze backbone]",
        rich_help_panel=TRAIN_PANEL, show_default=False)] = None,
    image_size: Annotated[Optional[int], typer.Option(
        "--image-size", help="Input size for training and for the saved model. "
                             "[default: 128; the model's own with --freeze backbone]",
        rich_help_panel=TRAIN_PANEL, show_default=False)] = None,
    freeze: Annotated[str, typer.Option(
        "--freeze", help="backbone (train the classifier only, on features computed once), none, or N: "
                         "keep the stem and the first N stages as loaded.", rich_help_panel=TRAIN_PANEL)] = "5",
    augment: Annotated[Augment, typer.Option(
        "--augment", help="none; standard: random resized crop + horizontal flip (for longer runs: --epochs 15 "
                          "and more); crop: the same without the flip (text, digits).",
        rich_help_panel=TRAIN_PANEL)] = Augment.none,
    label_smoothing: Annotated[float, typer.Option(
        "--label-smoothing", help="Cross-entropy label smoothing.", rich_help_panel=TRAIN_PANEL)] = 0.1,
    weight_decay: Annotated[float, typer.Option(
        "--weight-decay", help="AdamW weight decay (not on norms and biases).", rich_help_panel=TRAIN_PANEL)] = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the order, augmentation and the new head.",
                                      rich_help_panel=TRAIN_PANEL)] = 0,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the interrupted run in OUT_DIR (same settings).")] = False,
    variant: opt.VariantOpt = None,
    model: opt.ModelOpt = None,
    device: opt.Device = "auto",
    dtype: TrainDTypeOpt = TrainDType.float32,
    batch_size: opt.BatchSize = 32,
    workers: TrainWorkers = None,
    max_pixels: opt.MaxPixels = None,
    decode_timeout: opt.DecodeTimeout = None,
    quiet: opt.Quiet = False,
    progress: opt.Progress = None,
) -> int:
    """Fine-tune a classifier on your own labelled images; the result works with classify and embed.

    Examples:

      effnet finetune photos/ -o my-model/

      effnet finetune photos/ -o probe/ --freeze backbone

      effnet finetune train.csv --val val.csv -o my-model/ --epochs 12

      effnet classify new/*.jpg --model my-model/

    Ctrl-C saves a checkpoint; rerun the same command with --resume to continue.
    Exit status: 0 trained, 2 bad data or options (before training), 130 interrupted.
    """
    _check_arguments(data, output, val, max_pixels, decode_timeout)  # before any model or torch import
    from effnet_cli.training import finetune as run
    options = _training_options(locals())
    view = _Progress(progress_enabled(progress, quiet))
    try:
        with view:
            result = run(str(data), output, callback=view.event, **options)
    except KeyboardInterrupt:
        error_line(f"interrupted; checkpoint saved in {output}. Rerun the same command with --resume to continue.")
        return EXIT_INTERRUPTED
    if not quiet:
        render_report(result.metrics, output)
    return EXIT_OK


FINETUNE_LEDGER = ".effnet-finetune.json"  # effnet_cli.training.files.LEDGER: the names a run wrote into -o


def _check_arguments(data: Path, output: Path, val: Path | None, max_pixels: int | None,
                     decode_timeout: float | None) -> None:
    """The usage errors the arguments alone decide: missing data, an -o that holds files effnet did not write,
    an unusable --max-pixels or --decode-timeout.

    A directory a finished run wrote (every entry in its ledger) is written again; one that holds an
    interrupted run is refused by the training loop, which names --resume.
    """
    import json

    from effnet_cli.data.limits import check_input_limits
    from effnet_cli.output import foreign_files
    from effnet_cli.records.pathtext import display_path

    check_input_limits(max_pixels, decode_timeout)
    for path in (data, val):
        if path is not None and not path.exists():
            raise InputError(f"{display_path(path)}: no such directory or file.")
    if output.exists() and not output.is_dir():
        raise InputError(f"{display_path(output)} exists and is not a directory; choose another -o.")
    own: list[str] = []
    try:
        own = json.loads((output / FINETUNE_LEDGER).read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no ledger (or an unreadable one, which the training loop reports)
    foreign = [name for name in foreign_files(output, tuple(own)) if not name.startswith(".")]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{display_path(output)} already holds files effnet did not write ({display_path(foreign[0])}"
                         f"{more}); choose an empty or new output directory.")


def _training_options(args: dict[str, Any]) -> dict[str, Any]:
    """The command's parameters as the fields of :class:`effnet_cli.training.FinetuneOptions` they set."""
    from dataclasses import fields

    from effnet_cli.training import FinetuneOptions

    variant, model, val = args["variant"], args["model"], args["val"]
    if variant is not None and model is not None:
        raise InputError("Give either --variant or --model, not both.")
    given = {**args, "model": model if model is not None else (variant.value if variant is not None
                                                                else opt.DEFAULT_VARIANT),
             "val": None if val is None else str(val), "augment": args["augment"].value, "dtype": args["dtype"].value}
    return {f.name: given[f.name] for f in fields(FinetuneOptions) if f.name in given}


class _Progress:
    """Rich progress on stderr for the events the training loop emits; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=stderr_console(), transient=True)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _task(self, description: str, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, info="")

    def event(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "epoch":
            val = (f", val top-1 {e['val_top1'] * 100:.1f}%" if e.get("val_top1") is not None else "")
            line = (f"epoch {e['epoch']}: loss {e['train_loss']:.3f}, train accuracy {e['train_accuracy'] * 100:.1f}%"
                    f"{val}, {e['images_per_s'] or 0:.1f} images/s")
            if self.progress is not None:
                self.progress.console.print(line, highlight=False, markup=False)
        elif kind == "head" and self.progress is not None:
            self.progress.console.print(f"fitting the new head on the features ({e['epochs']} epochs)", markup=False)
        elif kind == "resumed" and self.progress is not None:
            self.progress.console.print(f"resuming at epoch {e['epoch'] + 1}, step {e['step']}", markup=False)
        if self.progress is None:
            return
        if kind == "features":
            self._task("computing features", e["images"])
        elif kind == "embedded":
            self.progress.update(self.task, completed=e["done"])
        elif kind == "step":
            if self.task is None or self.progress.tasks[-1].total != e["steps"] or e["step"] == 1:
                self._task(f"epoch {e['epoch']}/{e['epochs']}", e["steps"])
            self.progress.update(self.task, completed=e["step"], description=f"epoch {e['epoch']}/{e['epochs']}",
                                 info=f"loss {e['loss']:.3f} acc {e['accuracy'] * 100:.1f}% "
                                      f"{e['images_per_s']:.1f} img/s ETA {_duration(e['eta_s'])}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def render_report(metrics: dict[str, Any], output: Path) -> None:
    """The final report on stderr: top-1/top-5, per-class precision and recall, the confusion matrix."""
    stderr = stderr_console()
    from rich.table import Table

    classes = metrics["classes"]
    stderr.print(f"trained on {metrics['train_images']} images, {len(classes)} classes; "
                 f"model written to {output}", markup=False, highlight=False)
    if metrics["skipped_files"]:
        stderr.print(f"{metrics['skipped_files']} unusable file(s) skipped: see {output / 'errors.jsonl'}",
                     markup=False, highlight=False)
    v = metrics.get("validation")
    if not v:
        info_line("no validation images: no report (use --val or --val-split)")
        return
    stderr.print(f"validation: {v['images']} images, top-1 {v['top1'] * 100:.1f}%, "
                 f"top-{v['top5_k']} {v['top5'] * 100:.1f}%", markup=False, highlight=False)
    table = Table(title="per class", show_edge=False, pad_edge=False)
    for column, justify in (("class", "left"), ("images", "right"), ("precision", "right"), ("recall", "right")):
        table.add_column(column, justify=justify)
    for row in v["per_class"]:
        table.add_row(row["label"], str(row["images"]), _pct(row["precision"]), _pct(row["recall"]))
    stderr.print(table)
    if len(classes) <= 30:
        matrix = Table(title="confusion (rows: true class, columns: predicted)", show_edge=False, pad_edge=False)
        matrix.add_column("")
        for name in classes:
            matrix.add_column(name, justify="right")
        for name, row in zip(classes, v["confusion"]):
            matrix.add_row(name, *[str(c) if c else "." for c in row])
        stderr.print(matrix)
    pictures = [n for n in ("curves.png", "confusion.png", "report.html") if (output / n).is_file()]
    if pictures:
        stderr.print(f"pictures: {', '.join(str(output / n) for n in pictures)}", markup=False, highlight=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"
