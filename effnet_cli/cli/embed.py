"""``effnet embed``: feature vectors to .npy, with a manifest mapping every row to its file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.common import gather_inputs, load_engine, resolve_workers
from effnet_cli.cli.render import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    error_line,
    progress_bar,
    progress_enabled,
    report_failure,
)
from effnet_cli.errors import InputError


def _parse_features(value: str | None) -> int | None:
    if value is None or value == "head":
        return None
    kind, _, number = value.partition(":")
    if kind != "stage" or not number.isdigit():
        raise InputError(f"--features must be 'head' or 'stage:N' (N from `effnet config show`), got {value!r}.")
    return int(number)


def embed(
    inputs: opt.Inputs,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="The .npy to write; the manifest goes beside it as .jsonl.")] = None,
    per_file: Annotated[Optional[Path], typer.Option(
        "--per-file", help="Write one .npy per image under this directory instead (input paths mirrored).")] = None,
    pool: Annotated[str, typer.Option("--pool", help="mean or max over the feature map.")] = "mean",
    features: Annotated[Optional[str], typer.Option(
        "--features", help="head (the pooled hidden_dim features) or stage:N for stage N's feature map.",
        show_default=False)] = None,
    normalize: Annotated[bool, typer.Option("--normalize", help="L2-normalise each row.")] = False,
    resume: opt.Resume = False,
    output_dir: opt.OutputDir = None,
    shard_size: opt.ShardSize = None,
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
    from effnet_cli.cli import sharded
    from effnet_cli.cli.common import exact_decoding
    from effnet_cli.inference import POOLS

    fast_decode = not exact_decoding(exact_decode, True)

    if sum(x is not None for x in (output, per_file, output_dir)) != 1:
        raise InputError("Give exactly one of -o OUT.npy, --per-file DIR or --output-dir DIR.")
    sharded.check_options(output_dir=output_dir, shard_size=shard_size, devices=devices, engine=engine_kind,
                          ray_address=ray_address, ray_actors=ray_actors, device=device)
    partition = sharded.partition_of(shard)
    if pool not in POOLS:
        raise InputError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}.")
    if output is not None and output.suffix != ".npy":
        raise InputError(f"-o must name a .npy file, got {output}.")
    if per_file is not None and resume:
        raise InputError("--resume works with -o; --per-file runs write each file atomically and can simply be rerun.")
    stage = _parse_features(features)
    if stage is not None and backend is opt.BackendKind.auto:
        backend = opt.BackendKind.torch  # stage feature maps are not outputs of an export
    paths = gather_inputs(inputs, null)
    show = progress_enabled(progress, quiet)
    if output_dir is not None:
        # Workers and Ray actors load their own copies on their devices; this one checks the options and
        # serves the decode settings, so it stays on the CPU when they exist.
        elsewhere = devices is not None or engine_kind is opt.EngineKind.ray
        engine = load_engine(variant, model, revision, "cpu" if elsewhere else device, dtype, compile,
                             not fast_decode, max_pixels, quiet, "torch" if elsewhere else backend.value)
        dim = engine.feature_dim(stage)
        name = sharded.model_name(variant, model)
        spec = sharded.engine_spec(engine, name, dtype, compile)
        settings = {"model": name, "revision": spec.revision, "features": features or "head", "pool": pool,
                    "normalize": normalize, "dtype": dtype.value, "dim": dim,
                    "decode": "fast" if fast_decode else "exact", "max_pixels": engine.max_pixels}
        job = sharded.make_job("embed", paths, partition, output_dir, shard_size, settings, resume)
        return sharded.run(job, engine, spec, dict(pool=pool, stage=stage, normalize=normalize, batch_size=batch_size),
                           devices=devices, engine_kind=engine_kind, ray_address=ray_address, ray_actors=ray_actors,
                           workers=workers, quiet=quiet, show=show)
    paths = partition.select(paths)
    engine = load_engine(variant, model, revision, device, dtype, compile, not fast_decode, max_pixels, quiet,
                         backend.value)
    engine.feature_dim(stage)  # a bad stage number is a usage error, before any work
    run = dict(pool=pool, stage=stage, normalize=normalize, batch_size=batch_size, workers=resolve_workers(workers))
    if per_file is not None:
        return _embed_per_file(engine, paths, per_file, run, quiet, show)
    return _embed_to_array(engine, paths, output, run, resume, quiet, show)


def _embed_to_array(engine, paths: list[str], output: Path, run: dict, resume: bool, quiet: bool, show: bool) -> int:
    from effnet_cli.inference import embed_paths
    from effnet_cli.writers import NpyAppender, manifest_record

    output.parent.mkdir(parents=True, exist_ok=True)
    manifest = output.with_suffix(".jsonl")
    part_npy, part_manifest = output.with_name(output.name + ".partial"), manifest.with_name(manifest.name + ".partial")
    dim = engine.feature_dim(run["stage"])
    out_dtype = engine.output_numpy_dtype

    start, rows, failed = 0, 0, 0
    if resume and part_manifest.exists() and part_npy.exists():
        start, rows, failed = _recover(paths, part_manifest, part_npy, dim)
    elif resume and output.exists() and manifest.exists() and not part_manifest.exists():
        done = _read_manifest(manifest)
        if [r["path"] for r in done] == list(paths):
            if not quiet:
                error_line(f"{output} is already complete; nothing to resume.")
            return EXIT_SOME_FAILED if any(r.get("error") for r in done) else EXIT_OK
        raise InputError(f"{output} is complete but for other inputs; remove it or drop --resume.")
    else:
        part_manifest.write_text("", encoding="utf-8")

    array = NpyAppender(part_npy, dim, out_dtype, rows=rows)
    try:
        with open(part_manifest, "a", encoding="utf-8") as mf, \
                progress_bar(len(paths), show, "embed") as advance:
            advance(start)
            for batch in embed_paths(engine, paths, start=start, first_row=rows, **run):
                # Rows first, manifest second: after a kill the manifest never names a row the array lacks.
                array.append(batch.features)
                array.flush()
                for result in batch.results:
                    if not result.ok:
                        failed += 1
                        report_failure(result, quiet)
                    mf.write(json.dumps(manifest_record(result), ensure_ascii=False) + "\n")
                mf.flush()
                os.fsync(mf.fileno())
                advance(len(batch.results))
    except KeyboardInterrupt:
        array.close()
        error_line(f"interrupted; rerun the same command with --resume to finish {output}")
        return EXIT_INTERRUPTED
    array.close()
    os.replace(part_npy, output)
    os.replace(part_manifest, manifest)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _read_manifest(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # a line cut short by a kill: not a record
            records.append(json.loads(line))
    return records


def _recover(paths: list[str], part_manifest: Path, part_npy: Path, dim: int) -> tuple[int, int, int]:
    """Where an interrupted run stopped: (inputs done, rows written, failures), after trimming torn writes."""
    import numpy as np

    records = _read_manifest(part_manifest)
    if [r["path"] for r in records] != list(paths[: len(records)]):
        raise InputError("The interrupted run had different inputs; rerun without --resume to start over.")
    rows = sum(1 for r in records if r.get("row") is not None)
    try:
        header = np.load(part_npy, mmap_mode="r")
        have = header.shape[0] if header.ndim == 2 and header.shape[1] == dim else -1
    except (ValueError, OSError):
        have = -1
    if have < rows:
        raise InputError(f"{part_npy} does not match its manifest; rerun without --resume to start over.")
    # Keep exactly the complete manifest lines; the array is trimmed to `rows` when reopened.
    with open(part_manifest, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return len(records), rows, sum(1 for r in records if r.get("error"))


def _embed_per_file(engine, paths: list[str], directory: Path, run: dict, quiet: bool, show: bool) -> int:
    import io

    import numpy as np

    from effnet_cli.inference import embed_paths
    from effnet_cli.writers import atomic_write_bytes, manifest_record, per_file_target

    directory.mkdir(parents=True, exist_ok=True)
    records, failed = [], 0
    with progress_bar(len(paths), show, "embed") as advance:
        for batch in embed_paths(engine, paths, **run):
            base = min((r.row for r in batch.results if r.row is not None), default=0)
            for result in batch.results:
                if not result.ok:
                    failed += 1
                    report_failure(result, quiet)
                    records.append(manifest_record(result, file=None))
                    continue
                target = per_file_target(directory, result.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                np.save(buf, batch.features[result.row - base])
                atomic_write_bytes(target, buf.getvalue())
                records.append(manifest_record(result, file=str(target.relative_to(directory))))
            advance(len(batch.results))
    atomic_write_bytes(directory / "manifest.jsonl",
          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    return EXIT_SOME_FAILED if failed else EXIT_OK
