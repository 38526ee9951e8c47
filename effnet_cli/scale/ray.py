"""Beyond one machine: the same sharded run on a Ray cluster, with Ray Data doing the distribution.

    paths ── pre-check (driver) ──────────────────────────── error rows ──┐
          └─ read_binary_files ─> decode + preprocess (CPU tasks)          ├─> reorder by index ─> shard writers
                                  └─> model (actor pool, 1 GPU each) ──────┘      (driver, as results arrive)

* Inputs that are missing, unreadable or not regular files get their error
  record in the driver, from the same :func:`effnet_cli.data.open_image`
  checks the local engine uses: ``read_binary_files`` would fail the whole
  job on them.
* The bytes Ray read are decoded by the local pipeline itself
  (:func:`effnet_cli.data.iter_batches` with no workers), pointed at a copy
  of the bytes in a memory-backed temporary file (``/dev/shm``). Why a file:
  ``open_image`` takes paths only, and feeding it a file is the one way to
  apply exactly its safety rules (pixel limit, truncation, format sniffing)
  and exactly its error reasons without copying them here. A corrupt file is
  an error row, never a failed task.
* The model runs in ``ActorPoolStrategy`` actors that load the weights once
  (one GPU each when the cluster has GPUs).
* The driver receives results in input order (``preserve_order``), merges
  the pre-checked error rows by index, and writes the same shard files as a
  local run with :mod:`effnet_cli.scale.shards`, shard by shard as results
  arrive, so its memory stays bounded however many inputs there are.
* Faults are Ray's to retry, within bounds: a decode task whose worker
  process dies is run again (:data:`RETRIES` times), a model actor that dies
  (SIGKILL, the OOM killer) is restarted and its batch given to it again (up
  to :data:`RETRIES` times per batch). A batch that still fails is dropped
  (``max_errored_blocks``) instead of failing the job; the driver sees its
  inputs missing from the ordered results and computes them itself, each
  input decoded in a process of its own, so an input that crashes its
  decoder every time gets its own error record (``decoder process
  crashed``) and its neighbours their results (``on_recompute`` hears of
  each such batch). Nothing is retried forever.

Ray is an optional dependency (``pip install 'effnet-cli[ray]'``); it is
imported only when ``--engine ray`` is used. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import ConfigError, DecodeError, EffnetError
from effnet_cli.host import usable_cores
from effnet_cli.scale.ray_stages import ModelActor, decode_stage, expected_shape, recompute
from effnet_cli.scale.spec import EngineSpec, RunOptions
from effnet_cli.scale.shards import Plan, ShardJob, Summary, plan_shards, write_classify_shards, write_embed_shards

__all__ = ["require_ray", "connect", "default_actors", "run_ray"]

INSTALL_HINT = "--engine ray needs Ray Data: install effnet-cli[ray] (pip install 'effnet-cli[ray]')."

# Rows per decode task call; decoding is cheap next to the model, so this
# only needs to amortise Ray's per-call overhead.
_DECODE_BATCH = 16

# Tries after the first of a decode task whose process died, and of a model batch whose actor died. Ray
# Data's own defaults retry both forever, so an input that kills its worker every time would hang the run.
RETRIES = 3

_INLINE_PREFIX = "effnet-inline:"  # Ray's path column for inputs handed over as bytes


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a :class:`ConfigError` that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def _quiet_ray_logs() -> None:
    # Ray's INFO lines ("Started a local Ray instance", "Starting execution of
    # Dataset ...") would interleave with our one progress bar on stderr.
    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local one; True if we started it.

    A session that is already connected (a Python caller's, or a test's) is
    used as it is. A local session gets ``num_cpus`` logical CPUs: more than
    the cores, because the model actors each hold one for the whole run and
    the decode tasks still need some to be scheduled at all.
    """
    ray = require_ray()
    _quiet_ray_logs()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ray's C++ core writes its own log lines straight to file descriptor 2
    # (e.g. an "E" line about actor constructor arguments that Ray Data itself
    # causes); keep them to fatal ones unless the user chose a level.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        with _stderr_fd_silenced():  # the C++ core announces the level it just read, once, at start
            if address:
                ray.init(address=address, **common)
            else:
                ray.init(num_cpus=num_cpus, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        target = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"Cannot start or reach {target}: {' '.join(str(exc).split())[:200]}") from None
    return True


@contextmanager
def _stderr_fd_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the ``with`` body (Python-level errors still raise)."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded use): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def default_actors(explicit: int | None) -> int:
    """Model actors: as asked, else one per GPU in the cluster, else half the cluster's CPUs (at least 1)."""
    if explicit is not None:
        return explicit
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    return gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2)


def _precheck(path: str, open_kwargs: dict[str, Any]) -> str | None:
    """The error reason for an input Ray must not be asked to read, or None if it looks readable.

    Only the cheap checks (exists, regular file, readable, not empty) decide;
    the reason itself comes from :func:`open_image`, so it is word for word
    what the local engine records.
    """
    from effnet_cli.data import open_image

    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size > 0 and os.access(path, os.R_OK):
            return None
    except OSError:
        pass
    try:
        open_image(path, **open_kwargs)
    except DecodeError as exc:
        return str(exc)
    return None  # it became readable meanwhile: let Ray have it


def _ray_can_name(path: str) -> bool:
    """True when ``read_binary_files`` reads ``path`` under exactly that name.

    Ray parses paths as URLs, and URL parsing deletes tabs and line breaks
    (so ``a\nb.jpg`` becomes ``ab.jpg``, which fails the whole read), and
    Arrow needs UTF-8 names. Such rare files are read by the driver instead
    and handed to Ray as bytes.
    """
    if any(c in path for c in "\t\r\n"):
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ordered_batches(kind: str, todo: list[str], routed: _Routed, results: Iterator[dict[str, np.ndarray]],
                     recompute: Callable[[list[int]], dict[int, tuple[str | None, Any]]]) -> Iterator[Any]:
    """Merge Ray's results with the pre-checked errors and yield them in input order, as local batches do.

    Inputs that Ray passed over (their batch failed on every retry and was dropped) are computed by
    ``recompute`` as soon as a later input of the same stream shows they are missing.
    """
    from effnet_cli.records.results import EmbedBatch, Prediction, Result

    pending: dict[int, tuple[str | None, Any]] = {pos: (reason, None) for pos, reason in routed.early.items()}
    arrivals = _Arrivals(routed)
    next_pos = 0

    def flush() -> Iterator[Any]:
        nonlocal next_pos
        out, rows = [], []
        while next_pos in pending:
            error, payload = pending.pop(next_pos)
            if kind == "embed":
                out.append(Result(position=next_pos, path=todo[next_pos], error=error))
                if error is None:
                    rows.append(payload)
            else:
                preds = None if error is not None else [Prediction(**p) for p in json.loads(payload)]
                out.append(Result(position=next_pos, path=todo[next_pos], predictions=preds, error=error))
            next_pos += 1
        if out:
            if kind == "embed":
                yield EmbedBatch(results=out, features=np.stack(rows) if rows else np.zeros((0, 0), np.float32))
            else:
                yield out

    yield from flush()
    for batch in results:
        values = batch["features"] if kind == "embed" else batch["predictions"]
        for path, error, value in zip(batch["path"], batch["error"], values):
            pos = routed.index_of.get(str(path))
            if pos is None:  # Ray renamed a path after all: better a clear stop than a misfiled row
                raise EffnetError(f"Ray returned a result for {str(path)!r}, which is not among the inputs.")
            lost = arrivals.arrived(str(path), pos)
            if lost is None:
                continue  # it came after all, once recomputed: the first result stands
            pending.update(recompute(lost) if lost else {})
            pending[pos] = (str(error) or None, value)
        yield from flush()
    lost = arrivals.rest()
    if lost:
        pending.update(recompute(lost))
        yield from flush()
    if next_pos != len(todo):
        raise EffnetError(f"Ray returned results for {next_pos} of {len(todo)} inputs; rerun with --resume.")


class _Arrivals:
    """Which inputs Ray has returned, per stream: under ``preserve_order`` the rows of bytes come first,
    then the files read by path, each stream in input order, so an input passed over in its stream is
    one whose batch Ray dropped."""

    def __init__(self, routed: _Routed) -> None:
        self.streams = {True: [routed.index_of[row["path"]] for row in routed.inline],
                        False: [routed.index_of[path] for path in routed.readable]}
        self.cursor = {True: 0, False: 0}

    def arrived(self, key: str, pos: int) -> list[int] | None:
        """The positions passed over before ``pos``, or None when ``pos`` was itself passed over already."""
        inline = key.startswith(_INLINE_PREFIX)
        stream, i = self.streams[inline], self.cursor[inline]
        if i >= len(stream) or pos < stream[i]:
            return None
        lost = []
        while stream[i] != pos:
            lost.append(stream[i])
            i += 1
        self.cursor[inline] = i + 1
        return lost

    def rest(self) -> list[int]:
        """Every position not returned yet: Ray's results have ended."""
        lost = [pos for inline, stream in self.streams.items() for pos in stream[self.cursor[inline]:]]
        self.cursor = {inline: len(stream) for inline, stream in self.streams.items()}
        return sorted(lost)


@dataclass
class _Routed:
    """Where each input of a Ray run goes: an error row now, Ray's reader by path, or Ray as bytes."""

    early: dict[int, str] = field(default_factory=dict)  # position -> error reason, found by the driver
    readable: list[str] = field(default_factory=list)  # absolute paths Ray reads itself
    inline: list[dict[str, Any]] = field(default_factory=list)  # rows of bytes for names Ray would mangle
    index_of: dict[str, int] = field(default_factory=dict)  # Ray's path column -> position in the todo list


def _route(todo: list[str], open_kwargs: dict[str, Any]) -> _Routed:
    """Pre-check every input and decide how it reaches the decode tasks."""
    routed = _Routed()
    for pos, path in enumerate(todo):
        reason = _precheck(path, open_kwargs)
        if reason is not None:
            routed.early[pos] = reason
            continue
        absolute = os.path.abspath(path)  # workers do not share the driver's working directory
        if _ray_can_name(absolute):
            routed.index_of[absolute] = pos
            routed.readable.append(absolute)
            continue
        try:
            blob = Path(path).read_bytes()
        except OSError:
            routed.early[pos] = _precheck(path, open_kwargs) or "cannot read file"
            continue
        key = f"{_INLINE_PREFIX}{pos}"  # any unique text: it only routes the result back to its input
        routed.index_of[key] = pos
        routed.inline.append({"bytes": blob, "path": key})
    return routed


@contextmanager
def _ordered_quiet_context() -> Iterator[None]:
    """Ray Data's context for the block: no progress bars or stats lines, results in input order, failed
    batches dropped without a log line (their inputs are computed again); restored after."""
    from ray.data import DataContext

    # Ray Data logs a dropped batch as an error with its traceback; the driver recomputes it instead.
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    data_log.setLevel(logging.CRITICAL)
    try:
        with _data_context(DataContext.get_current()):
            yield
    finally:
        data_log.setLevel(saved_level)


@contextmanager
def _data_context(ctx: Any) -> Iterator[None]:
    """Ray Data's settings for the block (see :func:`_ordered_quiet_context`), restored after."""
    saved: dict[str, Any] = {}
    # max_errored_blocks: a batch that failed on every retry is dropped rather than failing the job; the
    # driver computes its inputs itself (see _ordered_batches).
    wanted = {"enable_progress_bars": False, "print_on_execution_start": False, "enable_auto_log_stats": False,
              "max_errored_blocks": -1}
    try:
        for name, value in wanted.items():
            if hasattr(ctx, name):
                saved[name] = getattr(ctx, name)
                setattr(ctx, name, value)
        # Results must reach the driver in input order, so shards can be written as they complete.
        saved_order = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True
        try:
            yield
        finally:
            ctx.execution_options.preserve_order = saved_order
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)


def _actors(ray: Any, address: str | None, actors: int | None) -> tuple[int, bool]:
    """Connect (or start a local Ray), then the number of model actors and whether this call started Ray."""
    import torch

    remote = bool(address or os.environ.get("RAY_ADDRESS")) or ray.is_initialized()
    local_gpus = torch.cuda.device_count()
    local_actors = actors or (local_gpus if local_gpus else max(1, usable_cores() // 2))
    owned = connect(address, num_cpus=usable_cores() + local_actors)
    return (local_actors if owned and not remote else default_actors(actors)), owned


def _pipeline(ray: Any, routed: _Routed, engine: Any, spec: EngineSpec, kind: str, run: RunOptions,
              n_actors: int) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data's read -> decode -> model pipeline over the routed inputs; its result batches, in order."""
    from ray.data import ActorPoolStrategy

    # A runtime backend runs on the CPU: its actors ask for no GPU.
    gpus = 1 if spec.backend == "torch" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    ds = ray.data.read_binary_files(routed.readable, include_paths=True) if routed.readable else None
    if routed.inline:
        # Few and first: the reorder buffer holds later results only until these arrive.
        extra = ray.data.from_items(routed.inline)
        ds = extra.union(ds) if ds is not None else extra
    # Bounded retries (Ray Data's defaults retry forever): see the module's notes.
    ds = ds.map_batches(decode_stage, batch_size=_DECODE_BATCH, batch_format="numpy", num_cpus=1,
                        max_retries=RETRIES,
                        fn_kwargs={"transform": engine.transform, "open_kwargs": engine.open_kwargs,
                                   "shape": expected_shape(engine),
                                   "decode_timeout": getattr(engine, "decode_timeout", None)})
    # batch_size must be an explicit int, as Ray requires with GPUs.
    ds = ds.map_batches(ModelActor, batch_size=int(run.batch_size), batch_format="numpy",
                        compute=ActorPoolStrategy(size=n_actors), num_gpus=gpus, num_cpus=1,
                        max_restarts=-1, max_task_retries=RETRIES,
                        fn_constructor_kwargs={"spec": spec, "kind": kind, "run": run, "threads": 1})
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def run_ray(job: ShardJob, spec: EngineSpec, engine: Any, run: RunOptions, *, address: str | None = None,
            actors: int | None = None, on_progress: Callable[[int], None] | None = None,
            on_failure: Callable[[Any], None] | None = None,
            on_plan: Callable[[Plan], None] | None = None,
            on_recompute: Callable[[int], None] | None = None) -> Summary:
    """Run a sharded ``job`` on Ray: same shard files, same numbers, same error records as a local run.

    ``engine`` is the driver's copy (its preprocessing and decoder options are
    shipped to the decode tasks, its feature width sizes the output); the
    actors load their own from ``spec``. ``run`` holds the embed or classify
    options (``run.batch_size``: rows per model call). A Ray session this
    function started is shut down before it returns.
    """
    ray = require_ray()
    plan = plan_shards(job)
    if on_plan is not None:
        on_plan(plan)
    todo = plan.todo_paths
    routed = _route(todo, engine.open_kwargs)
    owned = False
    with contextlib.ExitStack() as stack:
        try:
            results: Iterator[dict[str, np.ndarray]] = iter(())
            if routed.readable or routed.inline:
                n_actors, owned = _actors(ray, address, actors)
                stack.enter_context(_ordered_quiet_context())
                results = _pipeline(ray, routed, engine, spec, job.kind, run, n_actors)
            redo = recompute(todo, engine, job.kind, run, on_recompute)
            batches = _ordered_batches(job.kind, todo, routed, results, redo)
            if job.kind == "embed":
                return write_embed_shards(plan, batches, dim=run.embed_width(engine),
                                          dtype=engine.output_numpy_dtype, on_progress=on_progress,
                                          on_failure=on_failure)
            return write_classify_shards(plan, batches, on_progress=on_progress, on_failure=on_failure)
        finally:
            stack.close()  # the data context is restored before a session we started is shut down
            if owned:
                ray.shutdown()
