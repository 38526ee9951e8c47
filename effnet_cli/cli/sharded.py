"""The ``--output-dir`` mode that ``embed`` and ``classify`` share: check the options, pick the engine, run.

One process (the user's ``--device``), one worker process per device
(``--devices``), or Ray (``--engine ray``) all write the same shard layout
through :mod:`effnet_cli.scale.shards`; this module only wires options to them,
shows one progress bar, and turns the outcome into an exit status.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from effnet_cli.cli.options import DEFAULT_VARIANT, DType, EngineKind, Variant
from effnet_cli.cli.render import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    error_line,
    info_line,
    progress_bar,
    report_failure,
    summary_line,
)
from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import display_path
from effnet_cli.scale.shards import (
    DEFAULT_SHARD_SIZE,
    META_FORMATS,
    Partition,
    ShardJob,
    parse_shard,
)


def partition_of(shard: str | None) -> Partition:
    """``--shard I/N``, or the whole list."""
    return parse_shard(shard) if shard is not None else Partition()


def check_options(*, output_dir: Path | None, shard_size: int | None, devices: str | None, engine: EngineKind,
                  ray_address: str | None, ray_actors: int | None, device: str) -> None:
    """Usage errors of the scale options, before any input is read or model loaded."""
    if output_dir is None:
        for given, name in ((shard_size is not None, "--shard-size"), (devices is not None, "--devices"),
                            (engine is EngineKind.ray, "--engine ray")):
            if given:
                raise InputError(f"{name} writes sharded output: add --output-dir DIR.")
    if engine is not EngineKind.ray:
        for given, name in ((ray_address is not None, "--ray-address"), (ray_actors is not None, "--ray-actors")):
            if given:
                raise InputError(f"{name} only applies with --engine ray.")
    if devices is not None and engine is EngineKind.ray:
        raise InputError("--devices runs local worker processes; with --engine ray, Ray places the model "
                         "(use --ray-actors).")
    if devices is not None and device != "auto":
        raise InputError("Give --device or --devices, not both.")
    if devices is not None:
        from effnet_cli.scale.devices import parse_devices

        parse_devices(devices)  # a bad device list is a usage error before the model loads
    if engine is EngineKind.ray:
        from effnet_cli.scale.ray import require_ray

        require_ray()  # a missing extra is one line now, not after the model has loaded


def model_name(variant: Variant | None, model: str | None) -> str:
    """The name load_engine loads; local paths made absolute so other processes and nodes find them."""
    name = model if model is not None else (variant.value if variant is not None else DEFAULT_VARIANT)
    return os.path.abspath(name) if os.path.exists(name) else name


def engine_spec(engine: Any, name: str, dtype: DType, compile: bool) -> Any:
    """How workers and actors load the parent's model again, pinned to the revision the parent resolved."""
    from effnet_cli.scale.devices import EngineSpec

    source = engine.source or {}
    return EngineSpec(name=name, revision=source.get("revision"), dtype=dtype.value, compile=compile,
                      draft=engine.draft, max_pixels=engine.max_pixels)


def output_lock(kind: str, *, output: Path | None = None, output_dir: Path | None = None,
                per_file: Path | None = None, partition: Partition = Partition()) -> Any:
    """The lock of the output a command names, to hold for the whole run (see :mod:`effnet_cli.output.lock`)."""
    from effnet_cli.scale.shards import hold_lock, lock_path

    if output is not None:
        return hold_lock(lock_path(kind, output.parent, partition, output), output)
    if per_file is not None:
        return hold_lock(per_file.with_name(f".{per_file.name}.lock"), per_file)
    return hold_lock(lock_path(kind, output_dir, partition), output_dir)


def meta_format_of(meta_format: str | None, output_dir: Path | None) -> str:
    """``--meta-format``, checked before any work: parquet (the default) needs pyarrow."""
    from effnet_cli.scale.shards import check_meta_format

    if meta_format is None:
        meta_format = "parquet"
    elif output_dir is None:
        raise InputError("--meta-format chooses the metadata of --output-dir shards; add --output-dir DIR.")
    if meta_format not in META_FORMATS:
        raise InputError(f"--meta-format must be one of {', '.join(META_FORMATS)}, got {meta_format!r}.")
    if output_dir is not None:
        check_meta_format(meta_format)
    return meta_format


def _weights_identity(name: str, engine: Any, revision: str | None) -> str:
    """What identifies the weights: the hub commit, else the SHA-256 of the local checkpoint file."""
    from effnet_cli.output.settings import file_sha256

    if revision:
        return f"revision:{revision}"
    source = engine.source or {}
    directory = Path(name)
    for candidate in (directory / "model.safetensors", directory / "pytorch_model.bin"):
        if candidate.is_file():
            return f"sha256:{file_sha256(candidate)}"
    return "source:" + ",".join(f"{k}={v}" for k, v in sorted(source.items()))


def run_settings(engine: Any, name: str, revision: str | None, dtype: DType, full_decode: bool,
                 **specific: Any) -> dict[str, Any]:
    """The settings fingerprint of a run, stored in every partial and marker and checked on resume.

    Model identity and weights (hash or hub revision), dtype, the backend that runs the model (runtimes
    agree within 1e-4, not bit for bit, so one output never mixes them), decode mode, pixel limit and
    the processor's whole preprocessing, plus what the command adds (features, pool, normalize, width ...).
    """
    return {"model": name, "weights": _weights_identity(name, engine, revision), "dtype": dtype.value,
            "backend": getattr(engine, "backend", "torch"),
            "decode": "full" if full_decode else "reduced", "max_pixels": engine.max_pixels,
            "preprocessing": engine.processor.to_dict(), **specific}


def make_job(kind: str, all_paths: list[str], partition: Partition, output_dir: Path, shard_size: int | None,
             settings: dict[str, Any], resume: bool, meta_format: str = "parquet") -> ShardJob:
    """The shard job of this partition of ``all_paths``."""
    return ShardJob(kind=kind, directory=output_dir, paths=partition.select(all_paths), total=len(all_paths),
                    partition=partition, shard_size=shard_size or DEFAULT_SHARD_SIZE, settings=settings,
                    resume=resume, meta_format=meta_format)


def run(job: ShardJob, engine: Any, spec: Any, run_options: dict[str, Any], *, devices: str | None,
        engine_kind: EngineKind, ray_address: str | None, ray_actors: int | None, workers: int | None,
        quiet: bool, show: bool, started: float | None = None) -> int:
    """Run ``job`` on the chosen engine with one progress bar, holding the output's lock; the exit status.

    Unless ``quiet``, the run ends with a summary line on stderr (``started``: when the command began,
    from :func:`time.monotonic`).
    """
    from effnet_cli.scale.shards import lock_output

    with lock_output(job):
        return _run_locked(job, engine, spec, run_options, devices=devices, engine_kind=engine_kind,
                           ray_address=ray_address, ray_actors=ray_actors, workers=workers, quiet=quiet, show=show,
                           started=time.monotonic() if started is None else started)


def _run_locked(job: ShardJob, engine: Any, spec: Any, run_options: dict[str, Any], *, devices: str | None,
                engine_kind: EngineKind, ray_address: str | None, ray_actors: int | None, workers: int | None,
                quiet: bool, show: bool, started: float) -> int:
    from effnet_cli.data import default_workers

    device_list = None
    if devices is not None:
        from effnet_cli.scale.devices import parse_devices, usable_cores

        device_list = parse_devices(devices)
        if workers is None:  # decode processes per device worker: the cores shared out, at most 4 each
            workers = max(1, min(4, usable_cores() // len(device_list)))
    run_options = {**run_options, "workers": default_workers() if workers is None else workers}

    try:
        with progress_bar(len(job.paths), show, "embed" if job.kind == "embed" else "classify") as advance:
            report = {"on_progress": advance, "on_failure": lambda result: report_failure(result, quiet)}

            def skip_kept(plan: Any) -> None:  # a resume starts the bar at the inputs already done
                advance(plan.done_inputs)

            if engine_kind is EngineKind.ray:
                from effnet_cli.scale.ray import run_ray

                summary = run_ray(job, spec, engine, run_options, address=ray_address, actors=ray_actors,
                                  on_plan=skip_kept, **report)
            elif device_list is not None and len(device_list) > 1:
                from effnet_cli.scale.devices import run_on_devices

                summary = run_on_devices(job, device_list, spec, run_options, **report)
            else:
                from effnet_cli.scale import shards

                if device_list is not None:  # a single device: no worker process needed
                    engine = spec.build(device_list[0])
                into = shards.embed_into_shards if job.kind == "embed" else shards.classify_into_shards
                summary = into(engine, job, run_options, on_plan=skip_kept, **report)
    except KeyboardInterrupt:
        error_line(f"interrupted; what was written is kept: rerun the same command with --resume to finish "
                   f"{display_path(job.output)}")
        return EXIT_INTERRUPTED
    if summary.shards_written == 0 and summary.shards_kept and not quiet:
        if job.single is not None:
            info_line(f"{display_path(job.output)} is already complete; nothing to resume.")
        else:
            info_line(f"every shard in {display_path(job.directory)} was already finished; nothing to resume.")
    where = (f"written to {display_path(job.single)} (manifest {display_path(job.single.with_suffix('.jsonl').name)})"
             if job.single is not None else f"written to {display_path(job.directory)}/")
    if summary.shards_written:  # a resume that found everything finished said so above
        summary_line("embedded" if job.kind == "embed" else "classified", len(job.paths), summary.failures, where,
                     time.monotonic() - started, quiet)
    return EXIT_SOME_FAILED if summary.failures else EXIT_OK
