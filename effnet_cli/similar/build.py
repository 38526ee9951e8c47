"""Building and updating an index incrementally: embed only what is new or changed, drop what is gone.

A file is unchanged when its size and modification time (ns) match the manifest's; with ``use_hash``
a file whose size or time changed but whose SHA-256 did not is kept too (a copy, a ``touch``).
New rows are committed every ``checkpoint`` images, so a killed run keeps what it embedded: the
committed index is always usable, and the next run embeds only what is still missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.output.settings import file_sha256
from effnet_cli.records.results import EmbedBatch, Result
from effnet_cli.similar.ann import wanted
from effnet_cli.similar.features import embed_images
from effnet_cli.similar.search import BLOCK_ROWS, normalise
from effnet_cli.similar.store import Entry, IndexWriter, StoredIndex, check_index_settings

__all__ = ["DEFAULT_CHECKPOINT", "UpdatePlan", "UpdateSummary", "plan_update", "staged_batches", "update_index"]

DEFAULT_CHECKPOINT = 1000  # new rows between commits: a kill loses at most this many embeddings


@dataclass
class UpdatePlan:
    """What an incremental run does: rows it keeps, files it embeds, entries it drops."""

    keep: list[tuple[Entry, int]]  # (entry, row in the stored vectors), in row order
    embed: list[Entry]  # new or changed files, in input order
    replaces: dict[str, int]  # path -> stored row that a changed file's new vector replaces
    removed: int  # stored files that no longer exist
    kept_unchanged: int


@dataclass
class UpdateSummary:
    """What an incremental run did (``added 10, updated 0, removed 1, kept 4,812``) and its error records."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    kept: int = 0
    failures: list[Result] = field(default_factory=list)
    count: int = 0  # rows in the index afterwards

    def line(self) -> str:
        """The one summary line."""
        failed = f", failed {len(self.failures):,}" if self.failures else ""
        return (f"added {self.added:,}, updated {self.updated:,}, removed {self.removed:,}, "
                f"kept {self.kept:,}{failed}")


def entry_of(path: str, use_hash: bool) -> Entry | None:
    """The entry a file would get now; None when it cannot be read (its embedding reports why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Entry(path, st.st_size, st.st_mtime_ns, file_sha256(path) if use_hash else None)


def _unchanged(old: Entry, new: Entry | None, use_hash: bool) -> bool:
    if new is None:
        return False
    if (old.size, old.mtime_ns) == (new.size, new.mtime_ns):
        return True
    return use_hash and old.sha256 is not None and old.sha256 == file_sha256(new.path)


def plan_update(stored: StoredIndex | None, paths: Sequence[str], use_hash: bool = False) -> UpdatePlan:
    """Compare the inputs (absolute paths) and the stored manifest; stat each file once."""
    wanted = dict.fromkeys(paths)
    keep, replaces, removed = [], {}, 0
    now: dict[str, Entry | None] = {}
    for row, old in enumerate(stored.entries if stored is not None else []):
        current = entry_of(old.path, False)
        if current is None:
            removed += 1  # gone from the disk: dropped
            continue
        if old.path not in wanted or _unchanged(old, current, use_hash):
            stamped = Entry(old.path, current.size, current.mtime_ns, old.sha256) if old.path in wanted else old
            keep.append((stamped, row))
            continue
        keep.append((old, row))  # stays usable until its new vector is committed
        replaces[old.path] = row
        now[old.path] = current
    known = stored.rows_of if stored is not None else {}
    embed = []
    for path in wanted:
        if path in known and path not in replaces:
            continue
        entry = now.get(path) or entry_of(path, False) or Entry(path, -1, -1)
        if use_hash and entry.size >= 0:
            entry = Entry(entry.path, entry.size, entry.mtime_ns, file_sha256(path))
        embed.append(entry)
    return UpdatePlan(keep, embed, replaces, removed, len(keep) - len(replaces))


def staged_batches(staging: Path) -> Iterator[EmbedBatch]:
    """The rows a sharded run wrote to ``staging`` (every input accounted for), as one batch in input order."""
    from effnet_cli.scale.shards import read_embeddings

    vectors, records = read_embeddings(staging)
    yield EmbedBatch([Result(position=r["index"], path=r["path"], row=r["row"], error=r["error"]) for r in records],
                     vectors)


def _old_blocks(vectors: np.ndarray, rows: list[int]) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), BLOCK_ROWS):
        yield np.asarray(vectors[rows[start:start + BLOCK_ROWS]], dtype=np.float32)


def update_index(directory: Path, engine: Any, settings: dict[str, Any], paths: Sequence[str], *,
                 stored: StoredIndex | None, embed_kwargs: dict[str, Any], checkpoint: int = DEFAULT_CHECKPOINT,
                 use_hash: bool = False, on_batch: Callable[[list[Result]], None] | None = None,
                 previous_generation: int = 0,
                 embed: Callable[[list[str]], Iterable[EmbedBatch]] | None = None) -> UpdateSummary:
    """Bring the index in ``directory`` up to date with ``paths``; the caller holds the directory's lock.

    ``stored``: the committed index to update (None: start empty, e.g. ``--overwrite``); its settings
    must equal ``settings``. ``on_batch`` sees each batch's records (progress, error lines).
    ``embed``: computes the rows of the files to embed (a sharded run on devices or Ray); default: ``engine``.
    """
    if stored is not None:
        check_index_settings(stored, settings)
    plan = plan_update(stored, [os.path.abspath(p) for p in paths], use_hash)
    old_vectors = stored.vectors if stored is not None else np.zeros((0, settings["dim"]), np.float32)
    writer = IndexWriter(directory, settings, settings["dim"], stored.generation if stored else previous_generation)
    summary = UpdateSummary(removed=plan.removed, kept=plan.kept_unchanged)
    keep = plan.keep
    new_entries: list[Entry] = []
    new_blocks: list[np.ndarray] = []
    dropped: set[int] = set()
    pending = 0

    def commit(last: bool = False) -> None:
        kept = [(e, r) for e, r in keep if r not in dropped]
        count = len(kept) + len(new_entries)
        # The approximate index is built at the end of a run only: a checkpoint's commit leaves none, and
        # search is exact (with a note) until a run completes.
        writer.commit([e for e, _ in kept] + new_entries,
                      [*_old_blocks(old_vectors, [r for _, r in kept]), *new_blocks],
                      approximate=last and wanted(count))
        summary.count = count

    targets = [e.path for e in plan.embed]
    by_path = {e.path: e for e in plan.embed}
    batches = embed(targets) if embed is not None else embed_images(engine, targets, settings["features"],
                                                                    **embed_kwargs)
    for batch in batches:
        rows = normalise(batch.features)
        base = min((r.row for r in batch.results if r.row is not None), default=0)
        for result in batch.results:
            replaced = plan.replaces.pop(result.path, None)
            if replaced is not None:  # the old vector no longer describes the file, embedded or not
                dropped.add(replaced)
            if not result.ok:
                summary.failures.append(result)
                continue
            new_entries.append(by_path[result.path])
            new_blocks.append(rows[result.row - base][None, :])
            pending += 1
            if replaced is not None:
                summary.updated += 1
            else:
                summary.added += 1
        if on_batch is not None:
            on_batch(batch.results)
        if pending >= max(checkpoint, 1):
            commit()
            pending = 0
    if pending or plan.removed or dropped or stored is None or writer.generation == 0:
        commit(last=True)
    else:  # nothing left to write (an unchanged index is not rewritten)
        checkpointed = writer.generation != stored.generation  # a checkpoint's commit holds every row
        summary.count = summary.count if checkpointed else len(keep)
        if (checkpointed or stored.ann_file is None) and wanted(summary.count):
            # after a checkpoint, a killed run's last commit, or faiss installed since
            writer.add_approximate(writer.generation, summary.count)
    return summary
