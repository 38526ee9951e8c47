"""The ``--output-dir`` mode that ``embed`` and ``classify`` share: check the options, pick the engine, run.

One process (the user's ``--device``), one worker process per device
(``--devices``), or Ray (``--engine ray``) all write the same shard layout
through :mod:`effnet_cli.scale.shards`; this module only wires options to them,
shows one progress bar, and turns the outcome into an exit status.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from effnet_cli.cli.common import EngineOptions, load_engine
from effnet_cli.cli.options import EngineKind
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
from effnet_cli.scale.spec import EngineSpec, RunOptions, run_settings  # noqa: F401 - run_settings: the commands' name for it

RUNTIMES = ("onnxruntime", "openvino")  # the backends that run an export instead of the PyTorch model


@dataclass(frozen=True)
class ScaleOptions:
    """The sharded-output and scale options of ``embed`` and ``classify``, as given."""

    output_dir: Path | None = None  # --output-dir
    shard_size: int | None = None  # --shard-size
    resume: bool = False  # --resume
    shard: str | None = None  # --shard I/N
    devices: str | None = None  # --devices
    engine_kind: EngineKind = EngineKind.local  # --engine
    ray_address: str | None = None  # --ray-address
    ray_actors: int | None = None  # --ray-actors

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ScaleOptions:
        """The options from a command's parameters, by field name."""
        return cls(**{f.name: args[f.name] for f in fields(cls) if f.name in args})


def partition_of(shard: str | None) -> Partition:
    """``--shard I/N``, or the whole list."""
    return parse_shard(shard) if shard is not None else Partition()


def check_options(scale: ScaleOptions, *, device: str, backend: str, kind: str | None = None) -> None:
    """Usage errors of the scale options (with --device and --backend), before any input is read or model loaded;
    with ``kind``, also an --output-dir that already holds this run's first shard without --resume."""
    if kind is not None:
        _check_first_shard(kind, scale)
    ray = scale.engine_kind is EngineKind.ray
    if scale.output_dir is None:
        for given, name in ((scale.shard_size is not None, "--shard-size"), (scale.devices is not None, "--devices"),
                            (ray, "--engine ray")):
            if given:
                raise InputError(f"{name} writes sharded output: add --output-dir DIR.")
    if not ray:
        for given, name in ((scale.ray_address is not None, "--ray-address"),
                            (scale.ray_actors is not None, "--ray-actors")):
            if given:
                raise InputError(f"{name} only applies with --engine ray.")
    if scale.devices is not None and ray:
        raise InputError("--devices runs local worker processes; with --engine ray, Ray places the model "
                         "(use --ray-actors).")
    if scale.devices is not None and device != "auto":
        raise InputError("Give --device or --devices, not both.")
    if scale.devices is not None:
        from effnet_cli.scale.devices import parse_devices

        parse_devices(scale.devices)  # a bad device list is a usage error before the model loads
    if ray:
        from effnet_cli.scale.ray import require_ray

        require_ray()  # a missing extra is one line now, not after the model has loaded


def _check_first_shard(kind: str, scale: ScaleOptions) -> None:
    """Refuse, before anything loads, an --output-dir holding the first shard of the same partition (finished or
    partial) without --resume: what the shard plan would refuse once the model is loaded. Runs on several devices
    or on Ray name their shards per worker, and are left to that plan."""
    if scale.output_dir is None or scale.resume or scale.devices is not None or scale.engine_kind is EngineKind.ray:
        return
    # total=1: shard numbers of the narrowest width (5 digits), which every run of fewer than 10^5 shards uses.
    job = ShardJob(kind=kind, directory=scale.output_dir, paths=[], total=1, partition=partition_of(scale.shard),
                   settings={}, resume=False)
    files = {role: path for role, path in job.files(0).items() if role != "meta"}  # meta: its format may differ
    for path in (job.marker(0), *files.values(), *job.partials(0).values()):
        if os.path.lexists(path):
            raise InputError(f"{display_path(scale.output_dir)} already holds shards of this run "
                             f"({display_path(path.name)}); add --resume to finish it, or choose an empty --output-dir.")


def model_name(options: EngineOptions) -> str:
    """The name load_engine loads; local paths made absolute so other processes and nodes find them."""
    name = options.name
    return os.path.abspath(name) if os.path.exists(name) else name


def load(options: EngineOptions, scale: ScaleOptions, inputs: int) -> tuple[Any, EngineSpec]:
    """This process's engine, and the spec that workers and actors load theirs from.

    The backend is resolved here, once ("auto" measured at most once), so every worker runs the
    same one and the output's settings record it. When the model runs elsewhere, this engine only
    checks the options and serves the decode settings, so it stays on the CPU.
    """
    devices = None
    if scale.devices is not None:
        from effnet_cli.scale.devices import parse_devices

        devices = parse_devices(scale.devices)
    if scale.engine_kind is EngineKind.ray:
        # The decode tasks use the PyTorch engine's preprocessing. A runtime named with --backend runs in
        # every actor (exported here once, so the actors find it cached); "auto" is PyTorch on Ray, whose
        # actors may land on GPUs this process cannot see.
        explicit = options.backend in RUNTIMES
        engine = load_engine(options, device="cpu", backend=options.backend if explicit else "torch",
                             inputs=inputs, lean=False)
        backend = engine.backend
    elif devices is not None and set(devices) != {"cpu"}:
        engine = load_engine(options, device="cpu", backend="torch", inputs=inputs)
        backend = _backend_off_cpu(options, engine, devices)
    else:
        # This process or CPU workers: this engine's own choice is theirs.
        engine = load_engine(options, device="cpu" if devices is not None else None, inputs=inputs)
        backend = engine.backend
    source = engine.source or {}
    spec = EngineSpec(name=model_name(options), revision=source.get("revision"), dtype=options.dtype.value,
                      compile=options.compile, draft=engine.draft, max_pixels=engine.max_pixels,
                      decode_timeout=engine.decode_timeout, backend=backend,
                      batch_size=options.batch_size)
    return engine, spec


def _backend_off_cpu(options: EngineOptions, engine: Any, devices: list[str]) -> str:
    """The concrete backend of device workers that are not all CPUs: the one asked for, checked per device
    kind, or for "auto" PyTorch (the only candidate on an accelerator)."""
    from effnet_cli.runtime.backends import choose_backend

    needs_torch = ("--compile" if options.compile
                   else "preprocessing without a fixed size" if engine.processor.input_size is None else None)
    chosen = set()
    for kind in sorted({device.partition(":")[0] for device in devices}):
        # A CPU computes float16 in float32 (see Engine), so the backends are checked for that.
        dtype = "float32" if kind == "cpu" and options.dtype.value == "float16" else options.dtype.value
        chosen.add(choose_backend(options.backend, device_type=kind, dtype=dtype, needs_torch=needs_torch))
    return chosen.pop() if len(chosen) == 1 and "auto" not in chosen else "torch"


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


def make_job(kind: str, all_paths: list[str], partition: Partition, output_dir: Path, shard_size: int | None,
             settings: dict[str, Any], resume: bool, meta_format: str = "parquet") -> ShardJob:
    """The shard job of this partition of ``all_paths``."""
    return ShardJob(kind=kind, directory=output_dir, paths=partition.select(all_paths), total=len(all_paths),
                    partition=partition, shard_size=shard_size or DEFAULT_SHARD_SIZE, settings=settings,
                    resume=resume, meta_format=meta_format)


def run(job: ShardJob, engine: Any, spec: EngineSpec, run_options: RunOptions, scale: ScaleOptions, *,
        workers: int | None, quiet: bool, show: bool, started: float | None = None) -> int:
    """Run ``job`` on the chosen engine with one progress bar, holding the output's lock; the exit status.

    Unless ``quiet``, the run ends with a summary line on stderr (``started``: when the command began,
    from :func:`time.monotonic`).
    """
    from effnet_cli.scale.shards import lock_output

    started = time.monotonic() if started is None else started
    with lock_output(job):
        try:
            summary = _run_locked(job, engine, spec, run_options, scale, workers=workers, quiet=quiet, show=show)
        except KeyboardInterrupt:
            error_line(f"interrupted; what was written is kept: rerun the same command with --resume to finish "
                       f"{display_path(job.output)}")
            return EXIT_INTERRUPTED
    _report(job, summary, quiet, time.monotonic() - started)
    return EXIT_SOME_FAILED if summary.failures else EXIT_OK


def run_summary(job: ShardJob, engine: Any, spec: EngineSpec, run_options: RunOptions, scale: ScaleOptions, *,
                workers: int | None, quiet: bool, show: bool) -> Any:
    """As :func:`run`, holding the job's lock, without the closing lines: the :class:`Summary` (``effnet index``
    commits the rows itself). A KeyboardInterrupt is the caller's."""
    from effnet_cli.scale.shards import lock_output

    with lock_output(job):
        return _run_locked(job, engine, spec, run_options, scale, workers=workers, quiet=quiet, show=show)


def _run_locked(job: ShardJob, engine: Any, spec: EngineSpec, run_options: RunOptions, scale: ScaleOptions, *,
                workers: int | None, quiet: bool, show: bool) -> Any:
    """The job's :class:`Summary`, from this process, device workers or Ray."""
    from effnet_cli.data import default_workers

    device_list = None
    if scale.devices is not None:
        from effnet_cli.host import usable_cores
        from effnet_cli.scale.devices import parse_devices

        device_list = parse_devices(scale.devices)
        if workers is None:  # decode processes per device worker: the cores shared out, at most 4 each
            workers = max(1, min(4, usable_cores() // len(device_list)))
    run_options = run_options.with_workers(default_workers() if workers is None else workers)

    with progress_bar(len(job.paths), show, "embed" if job.kind == "embed" else "classify") as advance:
        report = {"on_progress": advance, "on_failure": lambda result: report_failure(result, quiet)}

        def skip_kept(plan: Any) -> None:  # a resume starts the bar at the inputs already done
            advance(plan.done_inputs)

        if scale.engine_kind is EngineKind.ray:
            from effnet_cli.scale.ray import run_ray

            return run_ray(job, spec, engine, run_options, address=scale.ray_address, actors=scale.ray_actors,
                           on_plan=skip_kept, on_recompute=_report_recompute, **report)
        if device_list is not None and len(device_list) > 1:
            from effnet_cli.scale.devices import run_on_devices

            return run_on_devices(job, device_list, spec, run_options, on_restart=_report_restart, **report)
        from effnet_cli.scale import shards

        if device_list is not None and device_list != ["cpu"]:  # one device: no worker process needed
            engine = spec.build(device_list[0])
        into = shards.embed_into_shards if job.kind == "embed" else shards.classify_into_shards
        return into(engine, job, run_options, on_plan=skip_kept, **report)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _report_restart(restart: Any) -> None:
    """One line on stderr for a device worker that died and is started again (shown even with --quiet:
    it is about the machine, not about one input)."""
    error_line(f"worker {restart.worker} ({restart.device}) {restart.reason}; restarting it after {restart.delay:g} s "
               f"(restart {restart.restart} of {restart.limit}) to redo {_plural(restart.redo_inputs, 'input')} "
               f"in {_plural(restart.redo_shards, 'unfinished shard')}; "
               f"{_plural(restart.kept_shards, 'finished shard')} of its partition kept")


def _report_recompute(count: int) -> None:
    """One line on stderr when Ray gave up on a batch and this process computes its inputs."""
    error_line(f"Ray failed {_plural(count, 'input')} on every retry (a worker died or raised each time); "
               "computing them here, each decoded in a process of its own")


def _report(job: ShardJob, summary: Any, quiet: bool, seconds: float) -> None:
    """The closing lines on stderr: nothing left to resume, or the summary."""
    if summary.shards_written == 0 and summary.shards_kept and not quiet:
        if job.single is not None:
            info_line(f"{display_path(job.output)} is already complete; nothing to resume.")
        else:
            info_line(f"every shard in {display_path(job.directory)} was already finished; nothing to resume.")
    where = (f"written to {display_path(job.single)} (manifest {display_path(job.single.with_suffix('.jsonl').name)})"
             if job.single is not None else f"written to {display_path(job.directory)}/")
    if summary.shards_written:  # a resume that found everything finished said so above
        summary_line("embedded" if job.kind == "embed" else "classified", len(job.paths), summary.failures, where,
                     seconds, quiet)
