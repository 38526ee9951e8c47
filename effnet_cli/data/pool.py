"""The batched loader without torch: worker processes from the standard library, numpy batches.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
              this module, for runtimes that do not need torch (ONNX Runtime, OpenVINO)

:func:`iter_batches` has the contract of :func:`effnet_cli.data.loader.iter_batches`
(input order, every input exactly once as a row or an error, one error record with
:data:`CRASH_REASON` for an input whose decoder kills its process, nothing else lost),
but its :class:`Batch` holds a numpy ``N×3×H×W`` float32 array, its transform returns
numpy arrays (e.g. :class:`effnet_cli.core.numpy_pixels.PixelPipeline`), and neither
this module nor its workers import torch: they are plain ``multiprocessing`` processes
(forkserver where the platform has it, so that a parent's threads are never forked; a run of
one batch per worker forks its workers while that is still safe, see :func:`start_batches`).

Each worker owns one duplex pipe: the main process sends it batch numbers (at most
``prefetch`` outstanding) and receives whole assembled batches, pickled. The main
process waits on the pipes and the workers' sentinels together, so a dead worker is
noticed at once; its current batch is then redone in a fresh process (each input alone
if that dies too, as the torch loader does), its other batches go to a new worker. Under a
time limit (``decode_timeout``, :mod:`effnet_cli.data.limits`) the wait also wakes every
quarter second to kill a worker that one input has held past the backstop, handled the same way.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
from PIL import Image

from effnet_cli.data.batching import CRASH_REASON, Batch, BatchJob, Stacking, checked_job, recover, run_isolated
from effnet_cli.data.limits import Watch, backstop_after
from effnet_cli.data.loader import default_workers

__all__ = ["CRASH_REASON", "Batch", "Batches", "default_workers", "iter_batches", "start_batches"]

# Seconds a closing worker gets to exit on its own before it is terminated, then killed.
_EXIT_GRACE_S = 2.0

# Seconds between looks at the watch's board while waiting for workers under a time limit.
_WATCH_POLL_S = 0.25


def _array_shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, np.ndarray) else None


def _stack_arrays(rows: list[Any]) -> np.ndarray:
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.empty((0, 3, 0, 0), np.float32)


# numpy arrays, N×3×H×W float32, pickled from the workers.
ARRAYS = Stacking("array", _array_shape, _stack_arrays)


# --------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------


def _worker_init(nice: int) -> None:
    """Lower the priority by ``nice`` (see ``worker_nice``) and give freed memory back.

    No thread setting is needed: Pillow decodes and numpy preprocesses on one thread, and
    nothing here uses BLAS. Ctrl-C is left to the main process, which stops the workers.
    """
    from effnet_cli.malloc import return_freed_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return_freed_memory()  # flat memory however many images a worker decodes
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: decoding still works, only less politely
            pass


def _worker_main(job: BatchJob, conn: Connection, nice: int, watch: Watch | None = None, slot: int = 0) -> None:
    """Say ("ready", -1, None), then answer each (batch number, span, paths) with ("ok", b, Batch) or
    ("error", b, exception). ``job`` comes without its paths (:meth:`BatchJob.without_paths`).

    With a ``watch``, the worker marks each input on its ``slot`` of the board.
    """
    _worker_init(nice)
    if watch is not None:
        watch.attach(slot)
    try:
        conn.send_bytes(pickle.dumps(("ready", -1, None)))
    except OSError:  # the loader was closed before this worker started
        return
    job.warm_up()  # after "ready": a transform that kills its process costs records, not the run
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        b, span, paths = task
        try:
            reply: tuple[str, int, Any] = ("ok", b, job.decode(span, paths))
        except BaseException as exc:  # hand a bug to the consumer instead of dying silently
            reply = ("error", b, exc)
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the main process closed the pipe: the loader was closed early
            return


def _recover_batch(ctx: Any, job: BatchJob, b: int, watch: Watch | None = None) -> Batch:
    """Redo batch ``b`` after its worker died: whole in a fresh process, else each input alone.

    The fresh processes use the watch's last slot, which no long-lived worker has.
    """
    slot = watch.slots - 1 if watch is not None else 0
    return recover(job.span(b), lambda positions: run_isolated(ctx, functools.partial(_worker_init, 0), job, positions,
                                                               watch, slot), ARRAYS)


class _Worker:
    """One worker process, its pipe and the batch numbers it has been sent but not answered, in order."""

    def __init__(self, ctx: Any, job: BatchJob, nice: int, watch: Watch | None = None, slot: int = 0) -> None:
        self.slot = slot  # its place on the watch's board, handed on to its replacement
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(job.without_paths(), child, nice, watch, slot),
                                daemon=True,
                                name="effnet-decode-worker")
        self.proc.start()
        child.close()
        self.pending: deque[int] = deque()
        self.ready = False  # it has said so: a death before that is a start-up failure, not an input's fault

    def stop(self) -> None:
        """Ask politely, then terminate, then kill: no worker outlives the loader.

        Closing the pipe right after asking lets a worker blocked on sending a batch
        nobody will read fail at once and exit, instead of waiting out the grace period.
        """
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.conn.close()
        self.proc.join(_EXIT_GRACE_S)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(_EXIT_GRACE_S)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.proc.close()


class _Pool:
    """The workers of one iter_batches call, batches dealt out ahead of the consumer and collected in order."""

    def __init__(self, ctx: Any, job: BatchJob, workers: int, prefetch: int, nice: int,
                 first_ctx: Any = None) -> None:
        # ``first_ctx`` starts the first workers; replacements, and processes that redo a crashed
        # batch, always come from ``ctx`` (see start_batches on why the first ones may be forked).
        self.ctx, self.job, self.prefetch, self.nice = ctx, job, prefetch, nice
        self.total = len(job)
        # Under a time limit the workers say which input they are on (a slot each, one more for recovery).
        self.watch = Watch(ctx, workers + 1) if job.timeout is not None else None
        self.workers = [_Worker(first_ctx or ctx, job, nice, self.watch, slot) for slot in range(workers)]
        self.next_task = 0
        self.redo: deque[int] = deque()  # batches of a dead worker it had not started
        self.ready: dict[int, Batch] = {}

    def __iter__(self) -> Iterator[Batch]:
        for b in range(self.total):
            while b not in self.ready:
                self.deal(b)
                self._collect()
            yield self.ready.pop(b)

    def deal(self, wanted: int) -> None:
        """Send batch numbers to workers with room, never further ahead of ``wanted`` than they can hold."""
        horizon = wanted + len(self.workers) * self.prefetch
        for worker in sorted(self.workers, key=lambda w: len(w.pending)):
            while len(worker.pending) < self.prefetch:
                if self.redo:
                    b = self.redo.popleft()
                elif self.next_task < min(self.total, horizon):
                    b, self.next_task = self.next_task, self.next_task + 1
                else:
                    return
                span = self.job.span(b)
                worker.conn.send((b, span, self.job.paths[span.start:span.stop]))
                worker.pending.append(b)

    def _collect(self) -> None:
        """Wait until a worker answers or dies, and take in whatever it said."""
        by_handle: dict[Any, _Worker] = {}
        for worker in self.workers:
            by_handle[worker.conn] = worker
            by_handle[worker.proc.sentinel] = worker
        for handle in wait(list(by_handle), timeout=None if self.watch is None else _WATCH_POLL_S):
            worker = by_handle[handle]
            if worker in self.workers and not self._receive(worker):
                self._replace(worker)
        if self.watch is not None:
            self._stop_overdue(self.watch)

    def _stop_overdue(self, watch: Watch) -> None:
        """Kill each worker that one input has held past the backstop, mark that input, and redo its batch.

        Its in-process timer should have ended the input long before: reaching this means a C call
        that never returns to Python (an uninterruptible read, a decoder in a loop).
        """
        by_slot = {worker.slot: worker for worker in self.workers}
        for slot, pos, _pid in watch.overdue(backstop_after(self.job.timeout or 0), list(by_slot)):
            worker = by_slot[slot]
            self.job.mark_hung(pos)  # before the recovery and the replacement, so neither tries it again
            worker.proc.kill()
            self._replace(worker)

    def _receive(self, worker: _Worker) -> bool:
        """Take every answer waiting on ``worker``'s pipe; False when the worker is dead."""
        try:
            while worker.conn.poll():
                status, b, value = pickle.loads(worker.conn.recv_bytes())
                if status == "ready":
                    worker.ready = True
                    continue
                if status == "error":
                    raise value
                worker.pending.remove(b)
                self.ready[b] = value
        except (EOFError, OSError):
            return False
        return worker.proc.is_alive()

    def _replace(self, dead: _Worker) -> None:
        """Recover the batch a dead worker was on, queue the rest for others, and start a new worker."""
        dead.proc.join()
        if not dead.ready:
            raise RuntimeError(
                f"A decode worker exited (code {dead.proc.exitcode}) before it started. With the "
                f"{self.ctx.get_start_method()} start method a script must start the loader under "
                "`if __name__ == '__main__':`; its error is printed above."
            )
        lost = list(dead.pending)
        dead.pending.clear()
        if self.watch is not None:
            self.watch.clear(dead.slot)
        if lost:
            self.ready[lost[0]] = _recover_batch(self.ctx, self.job, lost[0], self.watch)
            self.redo.extend(lost[1:])
        if self.redo or self.next_task < self.total:
            self.workers[self.workers.index(dead)] = _Worker(self.ctx, self.job, self.nice, self.watch, dead.slot)
        else:  # nothing left for a new worker to do
            self.workers.remove(dead)
        dead.stop()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []


def _context(name: str | None) -> Any:
    """forkserver where it exists (never forks a parent's threads), else spawn; or the named one.

    The fork server is asked to import this module (numpy, Pillow, the decoder) before its
    first fork, so that each worker, and each process that redoes a crashed batch, starts
    as a fork of an interpreter that already has them instead of importing them again.
    """
    if name is None:
        name = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(name)
    if name == "forkserver":
        from multiprocessing import forkserver

        preload = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
        if __name__ not in preload:  # no effect once the server runs; harmless then
            ctx.set_forkserver_preload([*preload, __name__])
    return ctx


def _can_fork_now() -> bool:
    """Whether forking this process now is safe: no Python thread but this one, and no runtime loaded.

    numpy's BLAS may have threads of its own; it re-initialises them in a forked child. An
    ONNX Runtime, OpenVINO or torch thread pool does not, so a process that has one never forks.
    """
    return ("fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
            and not any(name in sys.modules for name in ("onnxruntime", "openvino", "torch")))


class Batches:
    """The batches of a started loader, in input order; ``close()`` (or the end) stops its workers."""

    def __init__(self, pool: _Pool | None, batches: Iterator[Batch]) -> None:
        self._pool, self._batches = pool, batches

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> Batch:
        try:
            return next(self._batches)
        except BaseException:  # the end, or a failure: either way no worker is needed any more
            self.close()
            raise

    def close(self) -> None:
        """Stop and reap the workers; further iteration ends at once."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._batches = iter(())

    def __del__(self) -> None:
        self.close()


def start_batches(
    paths: Sequence[str],
    transform: Callable[[Image.Image], np.ndarray],
    *,
    batch_size: int,
    workers: int,
    open_kwargs: dict[str, Any] | None = None,
    start: int = 0,
    prefetch: int = 2,
    worker_nice: int = 0,
    start_method: str | None = None,
    decode_timeout: float | None = None,
) -> Batches:
    """:func:`iter_batches`, but its workers start and begin decoding before this returns.

    So a caller can do other work (the lean engine opens its runtime) while the first batches
    decode. A short run, one batch per worker or less, whose process may still fork safely
    (:func:`_can_fork_now`), forks its workers: a fork costs milliseconds where the fork server
    first needs tens of milliseconds to import numpy and Pillow, and such a run would wait for
    it; longer runs use the fork server, whose smaller workers keep the summed memory low.
    """
    job = checked_job(paths, transform, ARRAYS, batch_size=batch_size, workers=workers, prefetch=prefetch,
                       start=start, open_kwargs=open_kwargs, decode_timeout=decode_timeout)
    if workers == 0 or len(job) == 0:
        if len(job):
            job.warm_up()
        return Batches(None, (job[b] for b in range(len(job))))
    ctx = _context(start_method)
    count = min(workers, len(job))
    first = multiprocessing.get_context("fork") if start_method is None and count == len(job) and _can_fork_now() \
        else None
    pool = _Pool(ctx, job, count, prefetch, worker_nice, first_ctx=first)
    pool.deal(0)
    return Batches(pool, iter(pool))


def iter_batches(
    paths: Sequence[str],
    transform: Callable[[Image.Image], np.ndarray],
    *,
    batch_size: int,
    workers: int,
    open_kwargs: dict[str, Any] | None = None,
    start: int = 0,
    prefetch: int = 2,
    worker_nice: int = 0,
    start_method: str | None = None,
    decode_timeout: float | None = None,
) -> Iterator[Batch]:
    """Decode, preprocess and stack ``paths[start:]`` in batches, in input order, without torch.

    The arguments are those of :func:`effnet_cli.data.loader.iter_batches`; ``transform``
    returns a C×H×W numpy array and must be picklable, and each :class:`Batch`'s
    ``pixel_values`` is an N×3×H×W float32 numpy array (0×3×0×0 when every item failed).
    ``workers == 0`` decodes in the calling process. ``start_method`` picks the
    multiprocessing start method (default forkserver, else spawn). ``decode_timeout`` limits each
    input's decode as in the torch loader.

    Closing the generator early (``break``) stops and reaps the workers.
    """
    batches = start_batches(paths, transform, batch_size=batch_size, workers=workers, open_kwargs=open_kwargs,
                            start=start, prefetch=prefetch, worker_nice=worker_nice, start_method=start_method,
                            decode_timeout=decode_timeout)
    try:
        yield from batches
    finally:
        batches.close()
