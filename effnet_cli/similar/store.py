"""The index directory on disk: vectors, the manifest of files, the settings, published as one generation.

An index is a directory holding

- ``index.json``: the format, the settings the vectors were made with, the row count, the width and the
  generation it points at. It is published last (atomically, through :mod:`effnet_cli.output`), so it
  is the commit: a reader sees the previous generation or the new one, never a mix.
- ``vectors-G.npy``: float32, one L2-normalised row per file, read memory-mapped (memory stays bounded).
- ``manifest-G.jsonl``: one record per row, in row order: the path fields (:mod:`effnet_cli.records.pathtext`),
  the size and the modification time (ns) the file had when it was embedded, and a SHA-256 with ``--hash``.
- ``ann-G.faiss`` (large indexes, :mod:`effnet_cli.similar.ann`): the approximate index of generation G's
  vectors, named in ``index.json`` only when it was written for that generation, so it is never stale.

A run that is killed leaves the last committed generation in force; the files of a generation it had
begun are recognised by name and removed by the next writer, which holds the directory's lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.output import OutputLock, check_settings, fsync_dir, write_text
from effnet_cli.output.atomic import atomic_file
from effnet_cli.output.npy import NpyAppender
from effnet_cli.records.pathtext import display_path, path_fields, path_from_fields

__all__ = ["INDEX_FILE", "Entry", "IndexWriter", "StoredIndex", "check_index_settings", "index_lock", "is_index",
           "may_write", "read_index", "remove_staging", "staging_dir"]

INDEX_FILE = "index.json"
LOCK_FILE = ".effnet-index.lock"
FORMAT = "effnet-index/1"
STAGING_PREFIX = ".embed-"  # shards of the files a --devices or --engine ray run embeds, before their commit
_GENERATION_FILE = re.compile(r"^(vectors-\d+\.npy|manifest-\d+\.jsonl|ann-\d+\.faiss)$")


@dataclass(frozen=True)
class Entry:
    """One indexed file: its path and what it was when embedded (the incremental run compares these)."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None = None

    def record(self) -> dict[str, Any]:
        """The manifest record (path fields lossless for names that are not UTF-8)."""
        record: dict[str, Any] = {**path_fields(self.path), "size": self.size, "mtime_ns": self.mtime_ns}
        if self.sha256 is not None:
            record["sha256"] = self.sha256
        return record


class Manifest(Sequence[Entry]):
    """A generation's manifest, read as bytes and parsed a record at a time when asked.

    A search of a million-image index reads the whole file (about 60 bytes a row) but parses only its
    queries' and hits' records: parsing every record took 3.3 s and a 693 MB peak at a million rows.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)  # records end in \n, nothing else
        self._starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else ends
        self._ends = ends

    def __len__(self) -> int:
        return len(self._ends)

    def _entry(self, row: int) -> Entry:
        record = json.loads(self._data[self._starts[row]:self._ends[row]].decode("utf-8"))
        return Entry(path_from_fields(record), int(record["size"]), int(record["mtime_ns"]), record.get("sha256"))

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self._entry(i) for i in range(*row.indices(len(self)))]
        if not -len(self) <= row < len(self):
            raise IndexError(row)
        return self._entry(row % len(self))

    def __iter__(self) -> Iterator[Entry]:
        return (self._entry(i) for i in range(len(self)))

    def row_of(self, path: str) -> int | None:
        """The row of ``path``, found in the bytes without parsing every record."""
        head = json.dumps({"path": path_fields(path)["path"]}, ensure_ascii=False)[:-1].encode("utf-8")
        for needle in (head + b",", head + b"}"):
            at = -1
            while (at := self._data.find(needle, at + 1)) >= 0:
                if at == 0 or self._data[at - 1] == 10:  # at the start of a record
                    row = int(np.searchsorted(self._ends, at))
                    if self._entry(row).path == path:  # names that are not UTF-8 share a lossy "path"
                        return row
        return None


@dataclass
class StoredIndex:
    """A committed index: its settings, its entries (row order) and its vectors (memory-mapped)."""

    directory: Path
    settings: dict[str, Any]
    entries: Sequence[Entry]
    vectors: np.ndarray
    generation: int
    ann_file: str | None = None  # this generation's approximate index, when one was built
    _rows_of: dict[str, int] | None = field(default=None, repr=False)

    @property
    def rows_of(self) -> dict[str, int]:
        """Path -> row for every entry (built on first use: an update compares every file anyway)."""
        if self._rows_of is None:
            self._rows_of = {e.path: i for i, e in enumerate(self.entries)}
        return self._rows_of

    def row_of(self, path: str) -> int | None:
        """The row of one indexed ``path`` (None: not indexed), without building :attr:`rows_of`."""
        if self._rows_of is not None or not isinstance(self.entries, Manifest):
            return self.rows_of.get(path)
        return self.entries.row_of(path)

    def __len__(self) -> int:
        return len(self.entries)


def is_index(directory: Path) -> bool:
    """Whether ``directory`` holds an effnet index (its ``index.json``)."""
    return (Path(directory) / INDEX_FILE).is_file()


def may_write(directory: Path) -> bool:
    """Whether ``effnet index`` may write ``directory`` without asking: an index, or a directory holding only what
    a first run killed before its first commit left there (its generation files, its temporaries)."""
    directory = Path(directory)
    if is_index(directory):
        return True
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    ours = [n for n in names if _GENERATION_FILE.match(n) or n == LOCK_FILE or n.startswith(STAGING_PREFIX)
            or (n.startswith(".") and n.endswith(".part"))]
    return bool(ours) and len(ours) == len(names)


def staging_dir(directory: Path, paths: list[str]) -> Path:
    """Where a sharded run writes the rows of ``paths`` before they are committed: named by the list, so a rerun
    over the same files resumes its shards, and a run over other files starts afresh."""
    digest = hashlib.sha256("\0".join(paths).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return Path(directory) / f"{STAGING_PREFIX}{digest}"


def remove_staging(directory: Path, keep: Path | None = None) -> None:
    """Remove the staging directories of ours in ``directory`` but ``keep`` (the caller holds the lock)."""
    for name in os.listdir(directory):
        path = Path(directory) / name
        if name.startswith(STAGING_PREFIX) and path != keep and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)


def index_lock(directory: Path) -> OutputLock:
    """The lock every writer of ``directory`` holds: a second ``effnet index`` on it is refused at once."""
    return OutputLock(Path(directory) / LOCK_FILE, directory)


def read_index(directory: Path) -> StoredIndex:
    """The committed index in ``directory``; one-line :class:`InputError` when it is not an index."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{display_path(directory)} is not an effnet index (no such directory); "
                         f"build one with `effnet index IMAGES... -o {display_path(directory)}`.")
    try:
        head = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{display_path(directory)} is not an effnet index (it has no {INDEX_FILE}); "
                         f"build one with `effnet index IMAGES... -o {display_path(directory)}`.") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{display_path(directory / INDEX_FILE)} cannot be read: {exc}.") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise InputError(f"{display_path(directory)} is not an effnet index this version can read "
                         f"(format {head.get('format') if isinstance(head, dict) else None!r}).")
    generation = int(head["generation"])
    if head["count"]:
        vectors = np.load(directory / f"vectors-{generation}.npy", mmap_mode="r")
    else:
        vectors = np.zeros((0, int(head["dim"])), dtype=np.float32)
    entries = Manifest((directory / f"manifest-{generation}.jsonl").read_bytes())
    if len(entries) != len(vectors) or len(entries) != head["count"]:
        raise InputError(f"{display_path(directory)} is damaged: {len(entries)} manifest records, "
                         f"{len(vectors)} vectors; rebuild it with --overwrite.")
    ann_file = head.get("ann")
    if ann_file is not None and ann_file != ann_name(generation):
        ann_file = None  # not this generation's: never searched
    return StoredIndex(directory, head["settings"], entries, vectors, generation, ann_file)


def check_index_settings(stored: StoredIndex, settings: Mapping[str, Any]) -> None:
    """Refuse to add rows made with other settings (model, dtype, features, image size ...) to ``stored``."""
    check_settings(stored.settings, settings, f"The index {display_path(stored.directory)}")


class IndexWriter:
    """Writes new generations of the index in ``directory``; the caller holds :func:`index_lock`.

    :meth:`commit` writes the given rows (old rows copied from the memory-mapped previous generation
    in blocks, then the new ones) as a new generation and publishes ``index.json`` pointing at it.
    """

    def __init__(self, directory: Path, settings: Mapping[str, Any], dim: int, previous: int) -> None:
        self.directory, self.settings, self.dim = Path(directory), dict(settings), int(dim)
        self.generation = previous
        remove_unreferenced(self.directory, keep=previous)

    def commit(self, entries: list[Entry], blocks: Iterable[np.ndarray], *, approximate: bool = False) -> int:
        """Publish ``entries`` with their vectors (``blocks``, in row order) as the next generation.

        ``approximate``: also build and publish the generation's approximate index (before ``index.json``).
        """
        generation = self.generation + 1
        vectors_path = self.directory / f"vectors-{generation}.npy"
        for stale in (vectors_path, self.directory / f"manifest-{generation}.jsonl"):
            stale.unlink(missing_ok=True)  # ours: a killed run's unpublished generation of the same number
        out = NpyAppender(vectors_path, self.dim, np.float32)
        try:
            for block in blocks:
                out.append(np.asarray(block, dtype=np.float32))
        finally:
            out.close()
        if out.rows != len(entries):
            raise RuntimeError(f"index commit: {out.rows} vectors for {len(entries)} entries")
        with atomic_file(self.directory / f"manifest-{generation}.jsonl", text=True) as fh:
            for entry in entries:
                fh.write(json.dumps(entry.record(), ensure_ascii=False) + "\n")
        self._publish(generation, len(entries), approximate)
        return generation

    def add_approximate(self, generation: int, count: int) -> None:
        """Build the approximate index of committed ``generation`` (``count`` rows) and republish ``index.json``."""
        self._publish(generation, count, True)

    def _publish(self, generation: int, count: int, approximate: bool) -> None:
        head: dict[str, Any] = {"format": FORMAT, "generation": generation, "count": count, "dim": self.dim,
                                "settings": self.settings}
        if approximate and count:
            from effnet_cli.similar.ann import build_ann, write_ann

            vectors = np.load(self.directory / f"vectors-{generation}.npy", mmap_mode="r")
            write_ann(build_ann(vectors), self.directory / ann_name(generation))
            head["ann"] = ann_name(generation)
        write_text(self.directory / INDEX_FILE, json.dumps(head, indent=1, ensure_ascii=False) + "\n")
        fsync_dir(self.directory)
        self.generation = generation
        remove_unreferenced(self.directory, keep=generation)


def ann_name(generation: int) -> str:
    """The file name of generation ``generation``'s approximate index."""
    return f"ann-{generation}.faiss"


def remove_unreferenced(directory: Path, keep: int) -> None:
    """Remove the generation files of ours other than ``keep``'s (a finished run's old ones, a killed run's new ones)."""
    if not directory.is_dir():
        return
    for name in os.listdir(directory):
        if _GENERATION_FILE.match(name) and int(re.sub(r"\D", "", name)) != keep:
            (directory / name).unlink(missing_ok=True)
