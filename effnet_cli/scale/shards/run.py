"""Running a job on one engine: plan, infer what is left, write; plus the lock every run holds."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError
from effnet_cli.output.lock import OutputLock
from effnet_cli.scale.spec import RunOptions
from effnet_cli.scale.shards.job import ShardJob
from effnet_cli.scale.shards.plan import Plan, Summary, plan_shards
from effnet_cli.scale.shards.writer import FailureFn, ProgressFn, write_shards

__all__ = ["embed_into_shards", "classify_into_shards", "lock_output", "hold_lock", "parquet_available", "check_meta_format"]


def parquet_available() -> bool:
    """True when pyarrow can be imported (``--meta-format parquet`` needs it)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def check_meta_format(meta_format: str) -> None:
    """Refuse ``parquet`` metadata when pyarrow is missing, instead of silently writing something else."""
    if meta_format == "parquet" and not parquet_available():
        raise InputError("--meta-format parquet needs pyarrow (pip install pyarrow); or pass --meta-format jsonl.")


_HELD: set[Path] = set()  # lock files this process holds, so an early lock is not taken twice


@contextlib.contextmanager
def hold_lock(path: Path, output: Path) -> Iterator[None]:
    """Hold the lock file ``path`` of ``output`` for the block (a no-op when this process already holds it).

    Directories made for the lock are removed again when the run leaves them empty (it was refused,
    or failed before writing anything), so a refused run leaves no trace.
    """
    from effnet_cli.output.atomic import make_dir
    from effnet_cli.output.faults import check_writable

    path = Path(os.path.abspath(path))
    if path in _HELD:
        yield
        return
    check_writable(path, shown=output)  # a read-only or forbidden place: one line, exit status 2, before any work
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    make_dir(path.parent)
    try:
        with OutputLock(path, output):
            _HELD.add(path)
            try:
                yield
            finally:
                _HELD.discard(path)
    finally:
        for directory in made:  # deepest first; stops at the first one that holds something
            try:
                directory.rmdir()
            except OSError:
                break


def lock_output(job: ShardJob) -> contextlib.AbstractContextManager[None]:
    """The lock of ``job``'s output (its file, or its partition of the directory), as a context manager."""
    return hold_lock(job.lock_path(), job.output)


def _run(engine: Any, job: ShardJob, batches_for: Callable[[list[str]], Any], on_plan: Callable[[Plan], None] | None,
         **write: Any) -> Summary:
    plan = plan_shards(job)
    if on_plan is not None:
        on_plan(plan)
    todo = plan.todo_paths
    return write_shards(plan, batches_for(todo) if todo else iter(()), **write)


def embed_into_shards(engine: Any, job: ShardJob, run: RunOptions, *, on_progress: ProgressFn | None = None,
                      on_failure: FailureFn | None = None, on_plan: Callable[[Plan], None] | None = None) -> Summary:
    """Embed a partition into shard files with ``engine``, computing each batch as ``run`` says.

    ``on_plan`` sees the plan before any work (the CLI advances its progress
    bar past what a resume keeps). The caller holds the output's lock.
    """
    from effnet_cli.runtime.paths import embed_paths

    def batches_for(todo: list[str]) -> Any:
        if run.layout:  # an index's rows: the one function that computes them
            from effnet_cli.similar.features import embed_images

            return embed_images(engine, todo, "layout", batch_size=run.batch_size, workers=run.workers)
        return embed_paths(engine, todo, **run.embed_kwargs())

    return _run(engine, job, batches_for, on_plan, dim=run.embed_width(engine), dtype=engine.output_numpy_dtype,
                on_progress=on_progress, on_failure=on_failure)


def classify_into_shards(engine: Any, job: ShardJob, run: RunOptions, *,
                         on_progress: ProgressFn | None = None, on_failure: FailureFn | None = None,
                         on_plan: Callable[[Plan], None] | None = None) -> Summary:
    """Classify a partition into ``pred_*.jsonl`` shards, computing each batch as ``run`` says."""
    from effnet_cli.runtime.paths import classify_paths

    return _run(engine, job, lambda todo: classify_paths(engine, todo, **run.classify_kwargs()), on_plan,
                on_progress=on_progress, on_failure=on_failure)
