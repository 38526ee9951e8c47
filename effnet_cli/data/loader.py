"""The batched loader: decode and preprocess in worker processes, batches in input order.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
              this module

:func:`iter_batches` decodes and preprocesses in worker processes and yields
:class:`Batch` objects in input order; every input appears in exactly one
batch, either as a row of pixel values or as an error. A worker that dies
(segfault in a decoder, ``os._exit``, SIGKILL) costs one error record, not the run.

torch is imported only when batches are made, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from effnet_cli.data.batching import CRASH_REASON, Batch, BatchJob, Stacking, checked_job, recover, run_isolated
from effnet_cli.data.limits import Watch, backstop_after
from effnet_cli.host import usable_cores

if TYPE_CHECKING:  # pragma: no cover - torch is imported lazily at run time
    import torch

__all__ = ["CRASH_REASON", "Batch", "iter_batches", "default_workers"]

def _tensor_shape(value: Any) -> tuple[int, ...] | None:
    import torch

    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _stack_tensors(rows: list[Any]) -> torch.Tensor:
    import torch

    return torch.stack(rows) if rows else torch.empty((0, 3, 0, 0))


# The decode workers' outputs are torch tensors, stacked once in the worker and handed over through
# torch's shared memory.
TENSORS = Stacking("tensor", _tensor_shape, _stack_tensors)


def _worker_init(worker_id: int, nice: int = 0, watch: Watch | None = None) -> None:
    """Keep each decode worker to one intra-op thread, at ``nice`` lower priority; mark its inputs on ``watch``.

    Workers and the model share the same few cores; torch's default of one
    thread per core in every process would oversubscribe them badly. Why the
    priority: see ``worker_nice`` in :func:`iter_batches`.
    """
    import torch

    from effnet_cli.malloc import return_freed_memory

    torch.set_num_threads(1)
    return_freed_memory()  # flat memory however many images a worker decodes
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: decoding still works, only less politely
            pass
    if watch is not None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        if info is not None:
            info.dataset.warm_up()
        watch.attach(worker_id)


def _identity(batch: Batch) -> Batch:
    return batch


def _recover_batch(dataset: BatchJob, b: int, watch: Watch | None = None) -> Batch:
    """Redo batch ``b`` after a worker died, finding which input(s) kill the decoder.

    First the whole batch in one fresh process (the crash may have been in a
    neighbouring batch); if that dies too, each input alone, so exactly the
    culprits are marked as crashed and the rest keep their results. The fresh
    processes use the watch's last slot, which no DataLoader worker has.
    """
    slot = watch.slots - 1 if watch is not None else 0
    return recover(dataset.span(b), lambda positions: run_isolated(
        multiprocessing.get_context(), functools.partial(_worker_init, 0), dataset, positions, watch, slot), TENSORS)


_DONE = object()

# Seconds between checks that the decode workers are still alive.
_LIVENESS_POLL_S = 0.5


def _is_loader_timeout(exc: RuntimeError) -> bool:
    """True for the DataLoader's "timed out" error, which only means "not ready yet".

    Matched on torch's message; should it ever change, a slow batch is taken
    for a crash and redone in a fresh process: slower, but nothing is lost.
    """
    return "timed out" in str(exc)


class _LoaderThread(threading.Thread):
    """Runs the DataLoader and hands finished batches over through a bounded queue.

    Why a thread: a DataLoader iterated in the main thread installs a SIGCHLD
    handler that raises "worker exited unexpectedly" in the main thread
    wherever it happens to be, e.g. in the middle of the consumer's model
    call, where it cannot be caught and recovered. Iterated here, a dead
    worker surfaces as a RuntimeError from ``next()`` in this thread (torch
    polls worker liveness every few seconds), where we can redo that batch
    and carry on with a new loader.
    """

    def __init__(self, dataset: BatchJob, workers: int, prefetch: int, nice: int = 0) -> None:
        super().__init__(name="effnet-batch-loader", daemon=True)
        self.dataset = dataset
        self.workers = workers
        self.prefetch = prefetch
        self.nice = nice
        # Bounded: together with the loader's own prefetch this caps the
        # number of decoded-but-unconsumed batches however many inputs there are.
        self.out: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        # Under a time limit each worker says which input it is on (slot = worker id; one more for recovery).
        self.watch = Watch(multiprocessing.get_context(), workers + 1) if dataset.timeout is not None else None

    def _stop_overdue(self) -> None:
        """SIGKILL each worker that one input has held past the backstop, after marking that input.

        torch then reports the worker dead, and :meth:`run` redoes the batch in a fresh process, where
        the marked input gets the time-limit reason; the DataLoader reaps the killed process.
        """
        if self.watch is None:
            return
        for slot, pos, pid in self.watch.overdue(backstop_after(self.dataset.timeout or 0), range(self.workers)):
            self.dataset.mark_hung(pos)  # before any process that could try it again is started
            self.watch.clear(slot)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile; its batch is redone all the same
                pass

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _loader(self, first: int) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(
            self.dataset,
            batch_size=None,  # each dataset item already is a batch
            sampler=range(first, len(self.dataset)),
            num_workers=self.workers,
            collate_fn=_identity,
            prefetch_factor=self.prefetch,
            worker_init_fn=functools.partial(_worker_init, nice=self.nice, watch=self.watch),
            # Not a limit on how long a batch may take (a timeout just means
            # "ask again"), but how often torch checks that its workers are
            # alive: without it, a dead worker is noticed only every 5 s.
            timeout=_LIVENESS_POLL_S,
        )

    def run(self) -> None:
        try:
            b = 0
            total = len(self.dataset)
            while b < total and not self.stop.is_set():
                it = iter(self._loader(b))
                try:
                    while b < total:
                        try:
                            batch = next(it)
                        except (RuntimeError, OSError, EOFError) as exc:
                            if isinstance(exc, RuntimeError) and _is_loader_timeout(exc):
                                self._stop_overdue()
                                continue  # only slow: the batch is still on its way
                            # A worker died (or the loader broke). Batches
                            # before b were all delivered; redo b in
                            # isolation and restart the loader after it.
                            # OSError/EOFError: b was sent by a worker that died
                            # before its tensors' file descriptors were fetched
                            # (torch's resource sharer: connection reset).
                            batch = _recover_batch(self.dataset, b, self.watch)
                            b += 1
                            if not self._put(batch):
                                return
                            break
                        b += 1
                        self._stop_overdue()
                        if not self._put(batch):
                            return
                finally:
                    del it  # shuts the workers down
            self._put(_DONE)
        except BaseException as exc:  # hand any bug to the consumer, do not hang it
            self._put(exc)


def default_workers() -> int:
    """Number of decode worker processes to use by default: the usable cores, at most 4.

    More than four rarely helps: the model, not JPEG decoding, is the
    bottleneck, and every worker costs memory.
    """
    return max(1, min(usable_cores(), 4))


def iter_batches(
    paths: Sequence[str],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    batch_size: int,
    workers: int,
    open_kwargs: dict[str, Any] | None = None,
    start: int = 0,
    prefetch: int = 2,
    worker_nice: int = 0,
    decode_timeout: float | None = None,
) -> Iterator[Batch]:
    """Decode, preprocess and stack ``paths[start:]`` in batches, in input order.

    ``transform`` turns an RGB image into a 3×H×W tensor (it must be picklable
    when worker processes are started with "spawn"). Each :class:`Batch`
    covers the next ``batch_size`` positions (``span``); every position comes
    out exactly once, as a row of ``pixel_values`` or as an error reason.

    With ``workers > 0`` decoding runs in that many processes, ``prefetch``
    batches per worker ahead of the consumer; memory stays bounded because at
    most about ``workers * prefetch + prefetch + 2`` batches exist at once. A
    worker that dies costs only the input that killed it ("decoder process
    crashed"). ``workers == 0`` decodes in the calling thread, one batch at a
    time, with no overlap (simplest to debug; a crash there is the process's).

    ``worker_nice`` lowers the workers' scheduling priority by that much. Use
    it when the consumer computes on the same CPU cores: a CPU model's
    threads wait for each other at the end of every op, so a worker that
    preempts one of them stalls them all; a niced worker runs in the gaps
    (while the model waits for its next batch) instead, which made the whole
    pipeline 1.15-1.5× faster in steady state on an idle 2-core machine. But a
    niced worker also waits behind every other busy program on the machine,
    and then nothing reaches the model at all: the CLI leaves it at 0.

    ``decode_timeout`` (seconds; None or 0: no limit) bounds each input's read, decode and
    preprocessing: an input that takes longer gets an error record naming the limit
    (:func:`effnet_cli.data.limits.timeout_reason`) and the run goes on. A timer in the decoding
    process ends it; a worker stuck in a C call that ignores the timer is killed after
    :func:`effnet_cli.data.limits.backstop_after` seconds and replaced. With ``workers == 0`` only
    the timer applies, and only in the main thread.

    Closing the generator early (``break``) stops the workers.
    """
    dataset = checked_job(paths, transform, TENSORS, batch_size=batch_size, workers=workers, prefetch=prefetch,
                           start=start, open_kwargs=open_kwargs, decode_timeout=decode_timeout)
    if workers == 0:
        if len(dataset):
            dataset.warm_up()
        for b in range(len(dataset)):
            yield dataset[b]
        return

    thread = _LoaderThread(dataset, workers, prefetch, worker_nice)
    thread.start()
    try:
        while True:
            item = thread.out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        thread.stop.set()
        thread.join(timeout=30)
