"""``effnet classify``: top-k predictions per image, as Rich tables or machine records."""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.common import gather_inputs, load_engine, probe_hub_early, resolve_workers
from effnet_cli.cli.render import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    progress_bar,
    progress_enabled,
    render_table,
    report_failure,
    stdout_console,
    utf8_stdout,
    summary_line,
)
from effnet_cli.errors import InputError


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
    from effnet_cli.cli.common import exact_decoding
    from effnet_cli.runtime.engine import classify_paths, read_labels, require_classifier
    from effnet_cli.records.stream import RecordWriter

    full_decode = exact_decoding(exact_decode, False, full_decode)

    sharded.check_options(output_dir=output_dir, shard_size=shard_size, devices=devices, engine=engine_kind,
                          ray_address=ray_address, ray_actors=ray_actors, device=device)
    if output_dir is not None and format is not None:
        raise InputError("--format chooses what goes to stdout; --output-dir always writes .jsonl shards.")
    if resume and output_dir is None:
        raise InputError("--resume continues an --output-dir run; stdout output cannot be resumed.")
    partition = sharded.partition_of(shard)
    names = read_labels(labels) if labels is not None else None
    if output_dir is not None:
        # The output's lock first: a second run on the same directory is refused before it reads or loads anything.
        with sharded.output_lock("classify", output_dir=output_dir, partition=partition):
            paths = gather_inputs(inputs, null)
            elsewhere = devices is not None or engine_kind is opt.EngineKind.ray
            engine = load_engine(variant, model, revision, "cpu" if elsewhere else device, dtype, compile,
                                 full_decode, max_pixels, quiet, "torch" if elsewhere else backend.value,
                                 batch_size=batch_size, inputs=len(paths))
            require_classifier(engine)
            if names is not None and len(names) < engine.config.num_labels:
                raise InputError(f"The labels file has {len(names)} names but the model has "
                                 f"{engine.config.num_labels} classes.")
            name = sharded.model_name(variant, model)
            spec = sharded.engine_spec(engine, name, dtype, compile)
            settings = sharded.run_settings(engine, name, spec.revision, dtype, full_decode, top_k=top_k,
                                            threshold=threshold,
                                            labels=str(labels.resolve()) if labels is not None else None)
            job = sharded.make_job("classify", paths, partition, output_dir, shard_size, settings, resume)
            return sharded.run(job, engine, spec,
                               dict(top_k=top_k, threshold=threshold, labels=names, batch_size=batch_size),
                               devices=devices, engine_kind=engine_kind, ray_address=ray_address, ray_actors=ray_actors,
                               workers=workers, quiet=quiet, show=progress_enabled(progress, quiet), started=started)
    paths = partition.select(gather_inputs(inputs, null))
    engine = load_engine(variant, model, revision, device, dtype, compile, full_decode, max_pixels, quiet,
                         backend.value, batch_size=batch_size, inputs=len(paths))
    require_classifier(engine)
    fmt = (format or (Format.table if sys.stdout.isatty() else Format.jsonl)).value
    if fmt != "table":
        utf8_stdout()
    console = stdout_console() if fmt == "table" else None
    writer = None if fmt == "table" else RecordWriter(sys.stdout, fmt)
    failed = 0
    try:
        with progress_bar(len(paths), progress_enabled(progress, quiet), "classify") as advance:
            for results in classify_paths(engine, paths, top_k=top_k, threshold=threshold, labels=names,
                                          batch_size=batch_size, workers=resolve_workers(workers)):
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
        from effnet_cli.cli.render import error_line

        error_line("interrupted; results above are complete for the images they name")
        return EXIT_INTERRUPTED
    if writer is not None:
        writer.close()
    summary_line("classified", len(paths), failed, f"{fmt} on stdout", time.monotonic() - started, quiet)
    return EXIT_SOME_FAILED if failed else EXIT_OK
