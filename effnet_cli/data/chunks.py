"""A stream of inputs in chunks, so a run can start before its input list ends and never holds all of it.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers
    ^^^^^^
    this module: between discovery (:func:`effnet_cli.data.inputs.iter_inputs`) and the loader

:class:`Chunks` hands the paths of an iterator over in lists of at most ``limit``. With
``pause_s`` the iterator is read ahead in a thread, and a chunk is also handed over when the
source has paused that long with paths waiting: ``find ... | effnet classify -`` gets its
first results while ``find`` is still running, and a pipeline that trickles paths is never
held up waiting for a full chunk. Without it (no stdin: a walk or a list of arguments never
pauses for long) the chunks are taken in the calling thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Chunks"]

T = TypeVar("T")

# Seconds the reading thread waits for room when ``ahead`` items are already read and not taken.
_ROOM_POLL_S = 0.005


class Chunks(Generic[T]):
    """Lists of at most ``limit`` items of ``source``, in order; ``ended`` once the source is exhausted.

    ``pause_s`` (None: read in the calling thread) reads ``source`` in a daemon thread, at most
    ``ahead`` items (default ``limit``) ahead of the consumer, and ends a chunk early when no item
    came for ``pause_s`` seconds. An exception of ``source`` is raised by the ``next()`` after the
    items before it were handed over.
    """

    def __init__(self, source: Iterator[T], limit: int, *, pause_s: float | None = None,
                 ahead: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.source, self.limit, self.pause_s = source, limit, pause_s
        self.ended = False  # the source is exhausted (or failed): no chunk after the ones already taken
        self.taken = 0  # items handed over so far
        self._items: deque[T] = deque()
        self._ready = threading.Event()  # set by the reader after it adds an item or finishes
        self._done = False  # the reader finished (end of source, or _error)
        self._error: BaseException | None = None
        self._stop = False
        self._ahead = limit if ahead is None else max(1, ahead)
        self._thread: threading.Thread | None = None
        if pause_s is not None:
            self._thread = threading.Thread(target=self._read, name="effnet-input-reader", daemon=True)
            self._thread.start()

    def __iter__(self) -> Chunks[T]:
        return self

    def __next__(self) -> list[T]:
        chunk = self._take_threaded() if self._thread is not None else self._take_here()
        if chunk:
            self.taken += len(chunk)
            return chunk
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopIteration

    def close(self) -> None:
        """Stop reading ahead (the thread ends at its next item; one blocked on a read is a daemon)."""
        self._stop = True

    def _take_here(self) -> list[T]:
        chunk: list[T] = []
        if self.ended:
            return chunk
        try:
            for item in self.source:
                chunk.append(item)
                if len(chunk) == self.limit:
                    return chunk
        except Exception as exc:  # handed over after the items before it
            self._error = exc
        self.ended = True
        return chunk

    def _read(self) -> None:
        """The reader thread: items into the deque, at most ``ahead`` untaken; then the end, or the error."""
        try:
            for item in self.source:
                while len(self._items) >= self._ahead and not self._stop:
                    time.sleep(_ROOM_POLL_S)
                if self._stop:
                    return
                self._items.append(item)  # before the check of _ready: see _wait
                if not self._ready.is_set():
                    self._ready.set()
        except BaseException as exc:
            self._error = exc
        self._done = True
        self._ready.set()

    def _wait(self, timeout: float | None) -> bool:
        """Wait until an item is there or the reader is done; False when ``timeout`` passed first.

        Clearing the event and then looking again cannot miss an item: the reader appends before it
        looks at the event, so an item it added after our look finds the event clear and sets it.
        """
        while not self._items and not self._done:
            self._ready.clear()
            if self._items or self._done:
                break
            if not self._ready.wait(timeout):
                return False
        return True

    def _take_threaded(self) -> list[T]:
        chunk: list[T] = []
        if self.ended:
            return chunk
        self._wait(None)  # the first item of a chunk: however long the source takes
        while len(chunk) < self.limit:
            if self._items:
                chunk.append(self._items.popleft())
                continue
            if self._done:
                break
            if not self._wait(self.pause_s):
                return chunk  # the source paused with items waiting: hand them over now
        if self._done and not self._items:
            self.ended = True
            assert self._thread is not None
            # Joined, so a process that is about to start decode workers has no other thread left.
            self._thread.join()
        return chunk
