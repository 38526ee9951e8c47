"""``effnet classify``: top-k predictions per image, as Rich tables or machine records."""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.common import (
    EngineOptions,
    InputStream,
    exact_decoding,
    gather_inputs,
    load_engine,
    probe_hub_early,
    require_inputs,
    resolve_workers,
    stream_inputs,
)
from effnet_cli.cli.render import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    error_line,
    info_line,
    progress_bar,
    progress_enabled,
    render_table,
    report_failure,
    stdout_console,
    utf8_stdout,
    summary_line,
)
from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import display_path
from effnet_cli.scale.spec import RunOptions


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"


OutputFile = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE", show_default=False,
    help="Write the records to FILE instead of stdout, whole or not at all; the format follows its suffix "
         "(.json, .jsonl, .csv, .tsv) or --format.")]


def classify(
    inputs: opt.Inputs,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Predictions per image.")] = 5,
    format: Annotated[Optional[Format], typer.Option(
        "--format", "-f", help="table when stdout is a terminal, else jsonl; with -o, from its suffix.", show_default=False)] = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0,
                                             help="Drop predictions scoring below this (0-1).")] = 0.0,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Label names: one per line, or JSON.")] = None,
    output: OutputFile = None,
    report: opt.Report = None,
    overwrite: opt.Overwrite = False,
    output_dir: opt.OutputDir = None,
    shard_size: opt.ShardSize = None,
    resume: opt.Resume = False,
    shard: opt.Shard = None,
    devices: opt.Devices = None,
    engine_kind: opt.EngineOpt = opt.EngineKind.local,
    ray_address: opt.RayAddress = None,
    ray_actors: opt.RayActors = None,
    null: opt.Null = False,
    max_pixels: opt.MaxPixels = None, decode_timeout: opt.DecodeTimeout = None,
    variant: opt.VariantOpt = None,
    model: opt.ModelOpt = None,
    revision: opt.Revision = None,
    device: opt.Device = "auto",
    dtype: opt.DTypeOpt = opt.DType.float32,
    batch_size: opt.BatchSize = 16,
    workers: opt.Workers = None,
    compile: opt.Compile = False,
    exact_decode: opt.ExactDecode = None,
    full_decode: opt.FullDecode = False,
    backend: opt.BackendOpt = opt.BackendKind.auto,
    quiet: opt.Quiet = False,
    progress: opt.Progress = None,
) -> int:
    """Classify images: top-k labels and scores per image.

    Examples:

      effnet classify photos/*.jpg --variant lite0 --top-k 3

      find photos -name '*.jpg' -print0 | effnet classify - -0 --format jsonl

      effnet classify photos/ --output-dir preds/ --shard 0/4

    --output-dir writes pred_*.jsonl shards (one record per input, with its "index" in the
    input list) instead of stdout; see docs/scaling.md.
    Exit status: 0 all images classified, 1 some failed (each gets an error record, or a device
    worker died), 2 usage error.
    """
    started = time.monotonic()
    output, fmt = _check_arguments(inputs, output, format, output_dir, resume, overwrite, labels, report)
    probe_hub_early(variant, model)
    from effnet_cli.cli import sharded

    exact = exact_decoding(exact_decode, False, full_decode)
    scale = sharded.ScaleOptions.from_args(locals())
    sharded.check_options(scale, device=device, backend=backend.value, kind="classify")
    partition = sharded.partition_of(shard)
    from effnet_cli.runtime.paths import read_labels
    names = read_labels(labels) if labels is not None else None
    options = EngineOptions.from_args(locals(), exact_decode=exact, backend=backend.value)
    run = RunOptions(batch_size=batch_size, top_k=top_k, threshold=threshold, labels=names)
    page = _report(report, options, max_pixels)
    show = progress_enabled(progress, quiet)
    if output_dir is not None:
        # The output's lock first: a second run on the same directory is refused before it reads or loads anything.
        with sharded.output_lock("classify", output_dir=output_dir, partition=partition):
            paths = gather_inputs(inputs, null, compact=True)
            engine, spec = sharded.load(options, scale, len(paths))
            _check_model(engine, names, top_k, quiet)
            settings = sharded.run_settings(engine, spec, top_k=top_k, threshold=threshold,
                                            labels=str(labels.resolve()) if labels is not None else None)
            job = sharded.make_job("classify", paths, partition, output_dir, shard_size, settings, resume)
            return sharded.run(job, engine, spec, run, scale, workers=workers, quiet=quiet, show=show, started=started)
    paths = stream_inputs(inputs, null, partition)  # stdout and -o: read as the run goes
    if output is not None:
        return _classify_to_file(options, paths, output, fmt, overwrite, run, workers, quiet, show, started, page)
    return _classify_streaming(options, paths, fmt, run, workers, quiet, show, started, page)


def _classify_streaming(options: EngineOptions, paths: InputStream, fmt: str | None, run: RunOptions,
                        workers: int | None, quiet: bool, show: bool, started: float, page: Any) -> int:
    """Load the model and classify to stdout: a table on a terminal, else jsonl, unless --format says."""
    engine = load_engine(options, inputs=paths.total)
    _check_model(engine, None, run.top_k, quiet)
    fmt = fmt or (Format.table if sys.stdout.isatty() else Format.jsonl).value
    return _classify_to_stdout(engine, paths, fmt, run.with_workers(resolve_workers(workers)), quiet, show, started,
                               page=page)


SUFFIX_FORMATS = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def _check_arguments(inputs: list[str], output: Path | None, format: Format | None, output_dir: Path | None,
                     resume: bool, overwrite: bool, labels: Path | None,
                     report: Path | None = None) -> tuple[Path | None, str | None]:
    """The usage errors the arguments alone decide; ``-o``'s file (its suffix added if needed) and the format."""
    require_inputs(inputs)
    if labels is not None and not labels.is_file():
        raise InputError(f"--labels {labels}: no such file.")
    if output_dir is not None and format is not None:
        raise InputError("--format chooses what goes to stdout or -o; --output-dir always writes .jsonl shards.")
    if output is not None and output_dir is not None:
        raise InputError("Give -o FILE or --output-dir DIR, not both.")
    if resume and output_dir is None:
        raise InputError("--resume continues an --output-dir run; stdout and -o output cannot be resumed "
                         "(rerun with --overwrite).")
    if overwrite and output is None and report is None:
        raise InputError("--overwrite replaces the file -o names or the page --report names; add -o FILE or "
                         "--report PAGE.html (--output-dir runs take --resume).")
    _check_report(report, output_dir, overwrite)
    if output is None:
        return None, None if format is None else format.value
    if format is Format.table:
        raise InputError("--format table is for the terminal; -o writes json, jsonl, csv or tsv.")
    named = SUFFIX_FORMATS.get(output.suffix.lower())
    if named is not None and format is not None and format.value != named:
        raise InputError(f"-o {output} names a .{named} file but --format is {format.value}; give one.")
    fmt = named or (format.value if format is not None else "jsonl")
    if named is None:
        output = output.with_name(f"{output.name}.{fmt}")
        info_line(f"writing {display_path(output)} (-o takes the suffix of its format)")
    _check_file_output(output, overwrite)
    return output, fmt


def _check_report(report: Path | None, output_dir: Path | None, overwrite: bool) -> None:
    """--report's usage errors: not with --output-dir, an existing page only with --overwrite, Jinja2 installed."""
    if report is None:
        return
    if output_dir is not None:
        raise InputError("--report writes one page for a run to stdout or -o; --output-dir runs have none.")
    from effnet_cli.report.page import check_page

    check_page(report, overwrite=overwrite)


def _report(report: Path | None, options: EngineOptions, max_pixels: int | None) -> Any:
    """The page ``--report`` asks for, filled as the records go out (None without it)."""
    if report is None:
        return None
    from effnet_cli.report.classify import ClassifyReport

    return ClassifyReport(report, model=options.name, max_pixels=max_pixels, time_limit=options.time_limit)


def _check_file_output(output: Path, overwrite: bool) -> None:
    from effnet_cli.output.targets import check_file

    check_file(output, "-o", overwrite=overwrite)


def _check_model(engine: Any, names: list[str] | None, top_k: int, quiet: bool) -> None:
    """Usage errors the loaded model reveals: no classifier, or fewer label names than classes; a --top-k
    above the number of classes is lowered, and said so."""
    from effnet_cli.runtime.paths import require_classifier

    require_classifier(engine)
    classes = engine.config.num_labels
    if names is not None and len(names) < classes:
        raise InputError(f"The labels file has {len(names)} names but the model has {classes} classes.")
    if top_k > classes and not quiet:
        info_line(f"--top-k {top_k} is more than the model's {classes} classes; giving {classes} per image")


def _classify_to_file(options: EngineOptions, paths: InputStream, output: Path, fmt: str, overwrite: bool,
                      run: RunOptions, workers: int | None, quiet: bool, show: bool, started: float,
                      page: Any = None) -> int:
    """The records of ``_classify_to_stdout`` in ``output``, published whole (temporary, fsync, rename) at the end."""
    from effnet_cli.cli.sharded import output_lock

    # The lock first: a second run writing the same file is refused before the model loads.
    with output_lock("classify", per_file=output):
        _check_file_output(output, overwrite)  # checked again under the lock: another run may have finished
        engine = load_engine(options, inputs=paths.total)
        _check_model(engine, None, run.top_k, quiet)
        return _write_records(engine, paths, output, fmt, run.with_workers(resolve_workers(workers)), quiet, show,
                              started, page)


def _write_records(engine: Any, paths: InputStream, output: Path, fmt: str, run: RunOptions, quiet: bool,
                   show: bool, started: float, page: Any = None) -> int:
    from effnet_cli.output import atomic_file

    with atomic_file(output, text=True) as stream:
        status = _classify_to_stdout(engine, paths, fmt, run, quiet, show, started, stream=stream,
                                     where=f"{fmt} in {display_path(output)}", page=page)
    return status


def _classify_to_stdout(engine: Any, paths: InputStream, fmt: str, run: RunOptions, quiet: bool, show: bool,
                        started: float, stream: Any = None, where: str | None = None, page: Any = None) -> int:
    """Classify ``paths`` to stdout (or ``stream``) as tables or records, one batch at a time; the exit status.

    ``page`` (``--report``) hears every batch and is written once all inputs are done (not when interrupted).

    The inputs come in chunks (each with its own decode workers), so memory does not grow with their number.
    """
    from effnet_cli.records.stream import RecordWriter
    from effnet_cli.runtime.paths import classify_paths

    if fmt != "table" and stream is None:
        utf8_stdout()
    console = stdout_console() if fmt == "table" else None
    writer = None if fmt == "table" else RecordWriter(sys.stdout if stream is None else stream, fmt)
    failed = shown = done = 0
    try:
        with progress_bar(paths.total, show, "classify") as advance:
            for chunk in paths:
                for results in classify_paths(engine, chunk, **run.classify_kwargs()):
                    for result in results:
                        if not result.ok:
                            failed += 1
                            report_failure(result, quiet)
                        elif console is not None:
                            render_table(console, result)
                        shown += console is not None
                    if writer is not None:
                        writer.write(results)
                    if page is not None:
                        page.add(results)
                    done += len(results)
                    advance(len(results), total=paths.total)
    except KeyboardInterrupt:
        if stream is not None:
            raise  # -o: the file is published whole or not at all
        # Everything computed so far is already written and flushed; close the document cleanly.
        if writer is not None:
            writer.close()
        written = writer.count if writer is not None else shown
        error_line(f"interrupted after {written} image{'s' if written != 1 else ''}; "
                   "each one above is complete for the image it names")
        return EXIT_INTERRUPTED
    if writer is not None:
        writer.close()
    if page is not None:
        page.write()
    summary_line("classified", done, failed, where or f"{fmt} on stdout", time.monotonic() - started, quiet)
    return EXIT_SOME_FAILED if failed else EXIT_OK
