"""``effnet embed``: feature vectors to .npy, with a manifest mapping every row to its file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.common import (
    EngineOptions,
    exact_decoding,
    gather_inputs,
    probe_hub_early,
    require_inputs,
    resolve_workers,
)
from effnet_cli.cli.render import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    info_line,
    progress_bar,
    progress_enabled,
    report_failure,
    summary_line,
)
from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import display_path
from effnet_cli.scale.spec import RunOptions


def _parse_features(value: str | None) -> int | None:
    if value is None or value == "head":
        return None
    kind, _, number = value.partition(":")
    if kind != "stage" or not number.isdigit():
        raise InputError(f"--features must be 'head' or 'stage:N' (N from `effnet config show`), got {value!r}.")
    return int(number)


OutputFile = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE.npy", show_default=False,
    help="The .npy to write (.npy is added when missing); the manifest goes beside it as .jsonl.")]
PerFile = Annotated[Optional[Path], typer.Option(
    "--per-file", metavar="DIR", show_default=False,
    help="Write one .npy per image under this directory instead (input paths mirrored).")]


def embed(
    inputs: opt.Inputs,
    output: OutputFile = None,
    per_file: PerFile = None,
    pool: Annotated[opt.Pool, typer.Option("--pool", help="mean or max over the feature map.")] = opt.Pool.mean,
    features: Annotated[Optional[str], typer.Option(
        "--features", help="head (the pooled hidden_dim features) or stage:N for stage N's feature map.",
        show_default=False, metavar="head|stage:N")] = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise each row.")] = False,
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
    output_dir: opt.OutputDir = None,
    meta_format: opt.MetaFormat = None,
    shard_size: opt.ShardSize = None,
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
    backend: opt.BackendOpt = opt.BackendKind.auto,
    quiet: opt.Quiet = False,
    progress: opt.Progress = None,
) -> int:
    """Embed images: one feature row per image in an .npy, plus a .jsonl manifest.

    Examples:

      effnet embed photos/ -o feats.npy

      effnet embed photos/ -o feats.npy --features stage:6 --pool max --normalize

      effnet embed photos/ --per-file feats/

      effnet embed photos/ --output-dir feats/ --shard-size 10000 --devices all

    Rows follow input order; the manifest has one record per input ({"path", "row"}, or
    "row": null and "error" for a failed one). --dtype float16 writes a float16 array.
    --output-dir writes emb_*.npy + meta_*.parquet shards (+ errors_*.jsonl), readable with
    numpy or embedding-reader; see docs/scaling.md.
    Exit status: 0 all embedded, 1 some failed (or a device worker died), 2 usage error.
    """
    started = time.monotonic()
    # Everything the arguments alone decide, before any model, runtime or torch import.
    output = _check_arguments(inputs, output, per_file, output_dir, resume, overwrite)
    probe_hub_early(variant, model)
    from effnet_cli.cli import sharded

    scale = sharded.ScaleOptions.from_args(locals())
    sharded.check_options(scale, device=device, backend=backend.value, kind="embed")
    partition = sharded.partition_of(shard)
    meta = sharded.meta_format_of(meta_format, output_dir)
    run = _run_options(pool, output, per_file, resume, features, normalize, batch_size)
    if run.stage is not None and backend is opt.BackendKind.auto:
        backend = opt.BackendKind.torch  # stage feature maps are not outputs of an export
    options = EngineOptions.from_args(locals(), exact_decode=exact_decoding(exact_decode, True), backend=backend.value)
    show = progress_enabled(progress, quiet)
    # The output's lock first: a second run on the same output is refused before it reads or loads anything.
    with sharded.output_lock("embed", output=output, output_dir=output_dir, per_file=per_file, partition=partition):
        _check_outputs(output, per_file, resume, overwrite)  # again under the lock: another run may have finished
        paths = gather_inputs(inputs, null, compact=per_file is None)
        engine, spec = sharded.load(options, scale, len(paths))
        dim = engine.feature_dim(run.stage)  # a bad stage number is a usage error, before any work
        if per_file is not None:
            return _embed_per_file(engine, partition.select(paths), per_file, run.with_workers(resolve_workers(workers)),
                                   quiet, show, started)
        settings = sharded.run_settings(engine, spec, features=features or "head", pool=run.pool, normalize=normalize,
                                        dim=dim)
        job = _embed_job(paths, partition, scale, output, settings, meta)
        return sharded.run(job, engine, spec, run, scale, workers=workers, quiet=quiet, show=show, started=started)


def _check_arguments(inputs: list[str], output: Path | None, per_file: Path | None, output_dir: Path | None,
                     resume: bool, overwrite: bool) -> Path | None:
    """The usage errors the arguments alone decide; ``-o``'s file, with .npy added when it has no such suffix."""
    require_inputs(inputs)
    if sum(x is not None for x in (output, per_file, output_dir)) != 1:
        raise InputError("Give exactly one of -o FILE.npy, --per-file DIR or --output-dir DIR.")
    if resume and overwrite:
        raise InputError("--resume continues an output and --overwrite replaces it; give one.")
    if overwrite and output_dir is not None:
        raise InputError("--overwrite replaces -o's file or --per-file's files; an --output-dir run takes --resume "
                         "(or another directory).")
    if output is not None:
        from effnet_cli.output.targets import add_suffix

        named, output = output, add_suffix(output, (".npy",), ".npy")
        if output != named:
            info_line(f"writing {display_path(output)} (-o names a .npy file)")
    _check_outputs(output, per_file, resume, overwrite)
    return output


def _check_outputs(output: Path | None, per_file: Path | None, resume: bool, overwrite: bool) -> None:
    """An existing -o file (or its manifest) or a non-empty --per-file directory: refused without --overwrite."""
    from effnet_cli.output.targets import check_dir, check_file

    if output is not None:
        check_file(output, "-o", overwrite=overwrite, resume=resume, companions=(output.with_suffix(".jsonl"),))
    if per_file is not None:
        # --overwrite replaces what an earlier --per-file run wrote, recognised by its manifest.jsonl.
        earlier = (per_file / "manifest.jsonl").is_file()
        check_dir(per_file, "--per-file", overwrite=overwrite, own=lambda name: earlier)


def _run_options(pool: opt.Pool, output: Path | None, per_file: Path | None, resume: bool, features: str | None,
                 normalize: bool, batch_size: int) -> RunOptions:
    """What every batch computes, after the usage errors of the embed-only options."""
    from effnet_cli.runtime.paths import POOLS

    pool = opt.Pool(pool).value
    if pool not in POOLS:
        raise InputError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}.")
    if per_file is not None and resume:
        raise InputError("--resume works with -o; --per-file runs write each file atomically and can simply be rerun.")
    return RunOptions(batch_size=batch_size, pool=pool, stage=_parse_features(features), normalize=normalize)


def _embed_job(paths: list[str], partition: Any, scale: Any, output: Path | None, settings: dict[str, Any],
               meta: str) -> Any:
    """The shard job of ``--output-dir``, or of ``-o`` (the one-shard case of the same machinery: same
    partials, markers, settings check and lock)."""
    from effnet_cli.cli import sharded
    from effnet_cli.scale.shards import ShardJob

    if scale.output_dir is not None:
        return sharded.make_job("embed", paths, partition, scale.output_dir, scale.shard_size, settings,
                                scale.resume, meta)
    return ShardJob(kind="embed", directory=output.parent, paths=partition.select(paths), total=len(paths),
                    partition=partition, settings=settings, resume=scale.resume, single=output)


def _embed_per_file(engine: Any, paths: list[str], directory: Path, run: RunOptions, quiet: bool,
                    show: bool, started: float) -> int:
    """One .npy per input under ``directory`` (paths mirrored), each published atomically, then a manifest.

    Ends with the summary line; returns the exit status.
    """
    from effnet_cli.errors import WriteError
    from effnet_cli.output import make_dir, remove_written
    from effnet_cli.records.manifest import per_file_targets

    targets = per_file_targets(directory, paths)  # two inputs for one file: refused before anything is written
    # A first run that cannot finish (a full disk) takes its files back, so it can simply be run again;
    # over an earlier run's files (--overwrite) the earlier manifest stays and --overwrite works again.
    first, existed = not (directory / "manifest.jsonl").exists(), directory.exists()
    make_dir(directory)
    failed, written = 0, []
    try:
        failed = _write_per_file(engine, paths, directory, targets, run, quiet, show, written)
    except WriteError:
        if first:
            remove_written(directory, [*written, directory / "manifest.jsonl"], keep_directory=existed)
        raise
    summary_line("embedded", len(paths), failed, f"written to {display_path(directory)}/ (manifest.jsonl)",
                 time.monotonic() - started, quiet)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _write_per_file(engine: Any, paths: list[str], directory: Path, targets: dict[str, Path], run: RunOptions,
                    quiet: bool, show: bool, written: list[Path]) -> int:
    """The arrays (``written`` lists each one as it is begun) and the manifest; returns the failed inputs.

    The manifest's lines go out batch by batch (held in memory they would grow with the run); it is
    published whole at the end, or not at all.
    """
    import io

    import numpy as np

    from effnet_cli.output import atomic_file, make_dir, write_bytes
    from effnet_cli.records.manifest import manifest_record
    from effnet_cli.records.pathtext import path_fields
    from effnet_cli.runtime.paths import embed_paths

    failed = 0
    with progress_bar(len(paths), show, "embed") as advance, \
            atomic_file(directory / "manifest.jsonl", text=True) as manifest:
        for batch in embed_paths(engine, paths, **run.embed_kwargs()):
            base = min((r.row for r in batch.results if r.row is not None), default=0)
            records = []
            for result in batch.results:
                if not result.ok:
                    failed += 1
                    report_failure(result, quiet)
                    records.append(manifest_record(result, file=None))
                    continue
                target = targets[result.path]
                written.append(target)  # before its folders are made: a failed write takes them back too
                make_dir(target.parent)
                buf = io.BytesIO()
                np.save(buf, batch.features[result.row - base])
                write_bytes(target, buf.getvalue())
                relative = path_fields(target.relative_to(directory))
                records.append(manifest_record(result, file=relative["path"],
                                               **({"file_bytes": relative["path_bytes"]}
                                                  if "path_bytes" in relative else {})))
            manifest.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            advance(len(batch.results))
    return failed
