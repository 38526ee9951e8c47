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
    exact_decoding,
    gather_inputs,
    load_engine,
    probe_hub_early,
    resolve_workers,
)
from effnet_cli.cli.render import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    error_line,
    progress_bar,
    progress_enabled,
    render_table,
    report_failure,
    stdout_console,
    utf8_stdout,
    summary_line,
)
from effnet_cli.errors import InputError
from effnet_cli.scale.spec import RunOptions


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"


def classify(
    inputs: opt.Inputs,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Predictions per image.")] = 5,
    format: Annotated[Optional[Format], typer.Option(
        "--format", "-f", help="table when stdout is a terminal, else jsonl.", show_default=False)] = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, max=1.0,
                                             help="Drop predictions scoring below this (0-1).")] = 0.0,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Label names: one per line, or JSON.")] = None,
    output_dir: opt.OutputDir = None,
    shard_size: opt.ShardSize = None,
    resume: opt.Resume = False,
    shard: opt.Shard = None,
    devices: opt.Devices = None,
    engine_kind: opt.EngineOpt = opt.EngineKind.local,
    ray_address: opt.RayAddress = None,
    ray_actors: opt.RayActors = None,
    null: opt.Null = False,
    max_pixels: opt.MaxPixels = None,
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
    probe_hub_early(variant, model)
    from effnet_cli.cli import sharded
    from effnet_cli.runtime.paths import read_labels

    exact = exact_decoding(exact_decode, False, full_decode)
    scale = sharded.ScaleOptions.from_args(locals())
    sharded.check_options(scale, device=device, backend=backend.value)
    if output_dir is not None and format is not None:
        raise InputError("--format chooses what goes to stdout; --output-dir always writes .jsonl shards.")
    if resume and output_dir is None:
        raise InputError("--resume continues an --output-dir run; stdout output cannot be resumed.")
    partition = sharded.partition_of(shard)
    names = read_labels(labels) if labels is not None else None
    options = EngineOptions.from_args(locals(), exact_decode=exact, backend=backend.value)
    run = RunOptions(batch_size=batch_size, top_k=top_k, threshold=threshold, labels=names)
    show = progress_enabled(progress, quiet)
    if output_dir is not None:
        # The output's lock first: a second run on the same directory is refused before it reads or loads anything.
        with sharded.output_lock("classify", output_dir=output_dir, partition=partition):
            paths = gather_inputs(inputs, null)
            engine, spec = sharded.load(options, scale, len(paths))
            _check_model(engine, names)
            settings = sharded.run_settings(engine, spec, top_k=top_k, threshold=threshold,
                                            labels=str(labels.resolve()) if labels is not None else None)
            job = sharded.make_job("classify", paths, partition, output_dir, shard_size, settings, resume)
            return sharded.run(job, engine, spec, run, scale, workers=workers, quiet=quiet, show=show, started=started)
    paths = partition.select(gather_inputs(inputs, null))
    engine = load_engine(options, inputs=len(paths))
    _check_model(engine, None)
    fmt = (format or (Format.table if sys.stdout.isatty() else Format.jsonl)).value
    return _classify_to_stdout(engine, paths, fmt, run.with_workers(resolve_workers(workers)), quiet, show, started)


def _check_model(engine: Any, names: list[str] | None) -> None:
    """Usage errors the loaded model reveals: no classifier, or fewer label names than classes."""
    from effnet_cli.runtime.paths import require_classifier

    require_classifier(engine)
    if names is not None and len(names) < engine.config.num_labels:
        raise InputError(f"The labels file has {len(names)} names but the model has "
                         f"{engine.config.num_labels} classes.")


def _classify_to_stdout(engine: Any, paths: list[str], fmt: str, run: RunOptions, quiet: bool, show: bool,
                        started: float) -> int:
    """Classify ``paths`` to stdout as tables or records, one batch at a time; the exit status."""
    from effnet_cli.records.stream import RecordWriter
    from effnet_cli.runtime.paths import classify_paths

    if fmt != "table":
        utf8_stdout()
    console = stdout_console() if fmt == "table" else None
    writer = None if fmt == "table" else RecordWriter(sys.stdout, fmt)
    failed = 0
    try:
        with progress_bar(len(paths), show, "classify") as advance:
            for results in classify_paths(engine, paths, **run.classify_kwargs()):
                for result in results:
                    if not result.ok:
                        failed += 1
                        report_failure(result, quiet)
                    elif console is not None:
                        render_table(console, result)
                if writer is not None:
                    writer.write(results)
                advance(len(results))
    except KeyboardInterrupt:
        # Everything computed so far is already written and flushed; close the document cleanly.
        if writer is not None:
            writer.close()
        error_line("interrupted; results above are complete for the images they name")
        return EXIT_INTERRUPTED
    if writer is not None:
        writer.close()
    summary_line("classified", len(paths), failed, f"{fmt} on stdout", time.monotonic() - started, quiet)
    return EXIT_SOME_FAILED if failed else EXIT_OK
