"""A long list of paths kept compactly: one buffer of their bytes and an array of offsets.

A run over 100,000 files held them as 100,000 ``str`` objects (~80 bytes each
plus the list's pointer), and every slice the shard planner, the partitioner and
the loader took made another list of pointers: ~12 MB at 100,000 inputs, and
the reason a long run's memory grew with its input list. :class:`PathList` is an
immutable ``Sequence[str]`` over the paths' encoded bytes (``os.fsencode``, so
any name round-trips, undecodable bytes included); slicing returns a view that
shares the buffer, and each path is decoded only when it is read.

A bottom-floor module (numpy and the standard library only).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

__all__ = ["PathList", "compact", "concat"]


class PathList(Sequence[str]):
    """An immutable sequence of paths over one shared buffer; slices are views."""

    __slots__ = ("_blob", "_offsets", "_rows")

    def __init__(self, blob: bytes, offsets: np.ndarray, rows: range | np.ndarray | None = None) -> None:
        # Path i of the base list is blob[offsets[i]:offsets[i + 1]]; this view shows the base's ``rows``.
        self._blob, self._offsets = blob, offsets
        self._rows = range(len(offsets) - 1) if rows is None else rows

    @classmethod
    def from_iterable(cls, paths: Iterable[str | os.PathLike[str]]) -> PathList:
        """The paths of ``paths`` in order, each encoded as it arrives (no list of them is built first)."""
        blob, ends = bytearray(), [0]
        for path in paths:
            blob += os.fsencode(path)
            ends.append(len(blob))
        return cls(bytes(blob), np.asarray(ends, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, item: int) -> str: ...

    @overload
    def __getitem__(self, item: slice) -> PathList: ...

    def __getitem__(self, item: int | slice) -> str | PathList:
        if isinstance(item, slice):
            return PathList(self._blob, self._offsets, self._rows[item])
        row = int(self._rows[item])  # IndexError and negative indices as a list's
        return os.fsdecode(self._blob[self._offsets[row]:self._offsets[row + 1]])

    def __iter__(self) -> Iterator[str]:
        blob, offsets = self._blob, self._offsets
        for row in self._rows:
            yield os.fsdecode(blob[offsets[row]:offsets[row + 1]])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (PathList, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like list: compared by value

    def __repr__(self) -> str:
        shown = ", ".join(repr(p) for p in self[:3])
        return f"PathList([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} paths)"

    def __reduce__(self) -> tuple[Any, ...]:
        # A view pickles only its own paths, so a worker given one partition's slice gets that slice's bytes.
        if isinstance(self._rows, range) and self._rows.step == 1 and len(self._offsets) - 1 == len(self._rows):
            return PathList, (self._blob, self._offsets)
        return _rebuild, (list(self),)


def _rebuild(paths: list[str]) -> PathList:
    return PathList.from_iterable(paths)


def compact(paths: Sequence[str]) -> Sequence[str]:
    """``paths`` as a :class:`PathList` (unchanged when it already is one)."""
    return paths if isinstance(paths, PathList) else PathList.from_iterable(paths)


def concat(parts: Sequence[Sequence[str]]) -> Sequence[str]:
    """The parts one after another: a view of their shared buffer when all are views of one
    :class:`PathList`, else a plain list."""
    views = [p for p in parts if isinstance(p, PathList)]
    if not parts or len(views) < len(parts) or any(v._blob is not views[0]._blob for v in views):
        return [path for part in parts for path in part]
    first = views[0]
    rows = [v._rows for v in views]
    if all(isinstance(r, range) and r.step == 1 for r in rows) and \
            all(a.stop == b.start for a, b in zip(rows, rows[1:])):
        return PathList(first._blob, first._offsets, range(rows[0].start, rows[-1].stop))
    return PathList(first._blob, first._offsets, np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]))
