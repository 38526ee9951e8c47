"""Sharded outputs: deterministic partitions of the input list, shard files that resume.

A large run writes a directory of fixed-size shards instead of one file:

    DIR/emb_00000.npy          features of the inputs of shard 0 that were embedded (rows in input order)
    DIR/meta_00000.parquet     one row per embedding row: index, path, row   (.jsonl without pyarrow)
    DIR/errors_00000.jsonl     one line per input of shard 0 that failed: index, path, row (null), error
    DIR/_done_emb_00000.json   completion marker, written last
    DIR/pred_00000.jsonl       (classify) one record per input: index, path, predictions or error
    DIR/_done_pred_00000.json  (classify) completion marker

Shard ``k`` holds the inputs ``[k*N, (k+1)*N)`` of the (partition's) input
list. A :class:`Partition` ``I/N`` (``--shard I/N``, one per device with
``--devices``) is the inputs whose position in the full list is ``≡ I (mod
N)``; its files carry the partition in their names (``emb_p001of004_00000.npy``)
so independent jobs can share one directory. Every record carries ``index``,
the input's position in the full list, which is how partitions map back to
input order (:func:`read_embeddings`, :func:`read_predictions`).

Why errors live beside the metadata rather than in it: embedding-reader's
``parquet_npy`` format pairs ``meta_*.parquet`` row ``i`` with ``emb_*.npy``
row ``i`` and skips ``.npy`` files with no rows without skipping their
metadata file. So the metadata holds exactly the embedded inputs, a shard
whose inputs all failed writes no ``emb``/``meta`` pair at all, and failures
go to ``errors_*.jsonl`` (not parquet: the reader would take it for metadata).
``meta`` rows plus ``errors`` lines account for every input of a shard.

Every file is written under a temporary name and renamed into place; the
marker, written last, lists the files and the inputs (a hash of their paths)
and settings it was made from. ``resume`` keeps the shards whose marker and
files agree and redoes the others, so a killed run loses and duplicates
nothing. Nothing here prints: progress and failures go to callbacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import InputError

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "Partition",
    "parse_shard",
    "ShardJob",
    "Shard",
    "Plan",
    "Summary",
    "plan_shards",
    "embed_into_shards",
    "classify_into_shards",
    "write_embed_shards",
    "write_classify_shards",
    "read_embeddings",
    "read_predictions",
    "parquet_available",
]

# 10 000 rows of 1280 float32 features is ~50 MB: big enough that a million
# images make a hundred files, small enough that a redone shard costs minutes.
DEFAULT_SHARD_SIZE = 10_000

MARKER_FORMAT = "effnet-shards/1"
KINDS = {"embed": "emb", "classify": "pred"}  # command -> stem of its data files and markers
_MARKER_RE = re.compile(r"^_done_(emb|pred)_(?:p(\d+)of(\d+)_)?(\d+)\.json$")


def parquet_available() -> bool:
    """True when pyarrow can be imported, so metadata is written as parquet (else .jsonl)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- #
# Partitions
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``: the inputs at positions ≡ index (mod count)."""

    index: int = 0
    count: int = 1

    def positions(self, total: int) -> range:
        """Positions in the full input list (of length ``total``) this partition holds."""
        return range(self.index, total, self.count)

    def select(self, paths: Sequence[str]) -> list[str]:
        """The paths of this partition, in input order."""
        return list(paths[self.index::self.count])

    def split(self, parts: int) -> list[Partition]:
        """This partition divided round-robin into ``parts`` (one per device).

        Position ``j`` of this partition's list is global position
        ``index + count*j``; taking every ``parts``-th ``j`` from ``i`` gives
        the global positions ≡ index + count*i (mod count*parts), which is
        again a partition, so nested splits keep the same naming scheme.
        """
        return [Partition(self.index + self.count * i, self.count * parts) for i in range(parts)]

    @property
    def tag(self) -> str:
        """The partition's part of file names: empty for an unsplit run, else ``p001of004_``."""
        if self.count == 1:
            return ""
        width = max(3, len(str(self.count - 1)))
        return f"p{self.index:0{width}d}of{self.count:0{width}d}_"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Partition:
    """``--shard I/N`` -> Partition(I, N), with I in 0..N-1 (Slurm's array ids start at 0)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise InputError(f"--shard must be I/N (e.g. 0/4), got {text!r}.")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard I/N needs N ≥ 1 and 0 ≤ I < N, got {text!r}.")
    return Partition(index, count)


# --------------------------------------------------------------------------- #
# Plans
# --------------------------------------------------------------------------- #


@dataclass
class ShardJob:
    """Everything that decides which shard files a run writes; picklable, so device workers get one each.

    ``paths`` is this partition's list (``partition.select(all_paths)``) and
    ``total`` the length of the full list, from which global indices follow.
    ``settings`` (model, features, dtype, ...) is stored in every marker, so a
    resume with other settings is refused instead of mixing two kinds of rows.
    """

    kind: str  # "embed" or "classify"
    directory: Path
    paths: list[str]
    total: int
    partition: Partition = field(default_factory=Partition)
    shard_size: int = DEFAULT_SHARD_SIZE
    settings: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    meta_format: str = "parquet"  # "parquet" or "jsonl"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.shard_size < 1:
            raise InputError(f"--shard-size must be at least 1, got {self.shard_size}.")
        self.directory = Path(self.directory)

    def for_partition(self, partition: Partition, paths: list[str]) -> ShardJob:
        """The same job restricted to a sub-partition (see :meth:`Partition.split`)."""
        return ShardJob(kind=self.kind, directory=self.directory, paths=paths, total=self.total,
                        partition=partition, shard_size=self.shard_size, settings=self.settings,
                        resume=self.resume, meta_format=self.meta_format)

    @property
    def stem(self) -> str:
        """``emb`` or ``pred``."""
        return KINDS[self.kind]

    @property
    def number_width(self) -> int:
        """Digits of shard numbers: at least 5, more when needed, equal for every partition of the run.

        Fixed from the full input count (partition 0 is the largest), so every
        job of a run pads alike and names sort in shard order.
        """
        largest = -(-self.total // self.partition.count)
        shards = -(-largest // self.shard_size)
        return max(5, len(str(max(shards - 1, 0))))

    def shard_name(self, prefix: str, number: int, suffix: str) -> str:
        """``{prefix}_{partition tag}{number}{suffix}``, e.g. ``emb_p001of004_00003.npy``."""
        return f"{prefix}_{self.partition.tag}{number:0{self.number_width}d}{suffix}"

    def marker(self, number: int) -> Path:
        """The completion marker of shard ``number``."""
        return self.directory / self.shard_name(f"_done_{self.stem}", number, ".json")

    def files(self, number: int) -> dict[str, Path]:
        """Every data file shard ``number`` may have, by role."""
        d = self.directory
        if self.kind == "classify":
            return {"pred": d / self.shard_name("pred", number, ".jsonl")}
        meta_suffix = ".parquet" if self.meta_format == "parquet" else ".jsonl"
        return {"emb": d / self.shard_name("emb", number, ".npy"),
                "meta": d / self.shard_name("meta", number, meta_suffix),
                "errors": d / self.shard_name("errors", number, ".jsonl")}

    def shards(self) -> Iterator[Shard]:
        """The shards of this partition, in order."""
        positions = self.partition.positions(self.total)
        for number, first in enumerate(range(0, len(self.paths), self.shard_size)):
            last = min(first + self.shard_size, len(self.paths))
            yield Shard(number, positions[first:last], self.paths[first:last])


@dataclass
class Shard:
    """One shard: its number and the global indices and paths of its inputs."""

    number: int
    indices: range
    paths: list[str]

    def fingerprint(self) -> str:
        """Hash of the shard's input paths: a resume over other inputs must not reuse it."""
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(os.fsencode(path) + b"\0")
        return digest.hexdigest()


@dataclass
class Plan:
    """What a run still has to do: the shards to (re)write, and what finished shards already hold."""

    job: ShardJob
    todo: list[Shard]
    done_inputs: int = 0
    done_failures: int = 0
    done_shards: int = 0

    @property
    def todo_paths(self) -> list[str]:
        """The inputs of the shards still to write, in order: what the model must see."""
        return [p for shard in self.todo for p in shard.paths]


@dataclass
class Summary:
    """What a sharded run did, counting shards kept from an earlier run."""

    inputs: int = 0
    failures: int = 0
    rows: int = 0
    shards_written: int = 0
    shards_kept: int = 0

    def merge(self, other: Summary) -> None:
        """Add another partition's counts (device workers report one each)."""
        for name in ("inputs", "failures", "rows", "shards_written", "shards_kept"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _files_agree(job: ShardJob, marker: dict[str, Any]) -> bool:
    """True when the files a marker lists exist and hold the rows it says."""
    try:
        names = marker["files"]
        paths = {role: job.directory / name for role, name in names.items()}
        if not all(p.is_file() for p in paths.values()):
            return False
        if job.kind == "classify":
            return _count_lines(paths["pred"]) == marker["inputs"]
        rows, errors = marker["rows"], marker["errors"]
        if ("emb" in paths) != (rows > 0) or ("errors" in paths) != (errors > 0):
            return False
        if rows:
            array = np.load(paths["emb"], mmap_mode="r")
            if array.ndim != 2 or array.shape[0] != rows or array.shape[1] != job.settings.get("dim", array.shape[1]):
                return False
            meta = paths["meta"]
            if meta.suffix == ".parquet":
                import pyarrow.parquet as pq

                if pq.read_metadata(meta).num_rows != rows:
                    return False
            elif _count_lines(meta) != rows:
                return False
        return not errors or _count_lines(paths["errors"]) == errors
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check_neighbours(job: ShardJob) -> None:
    """Refuse a directory that holds shards of a differently split or differently configured run.

    Jobs of one run (``--shard I/N`` for each I, or one per device) share a
    directory; a second run with another split would make readers see some
    inputs twice, and one with other settings would mix incomparable rows.
    """
    if not job.directory.is_dir():
        return
    for entry in os.scandir(job.directory):
        match = _MARKER_RE.match(entry.name)
        if not match or match.group(1) != job.stem:
            continue
        count = int(match.group(3) or 1)
        if count != job.partition.count:
            raise InputError(f"{job.directory} already holds shards of a run split into {count} "
                             f"partition{'s' if count != 1 else ''}; use the same --shard/--devices split "
                             f"or another --output-dir.")
        marker = _read_marker(Path(entry.path))
        if marker is None:
            continue  # a damaged marker of our own partition is redone; of another job's, not ours to judge
        if marker.get("total_inputs") != job.total:
            raise InputError(f"{job.directory} holds shards of a run over {marker.get('total_inputs')} inputs, "
                             f"but this one has {job.total}; every job of a run must see the same input list.")
        theirs = marker.get("settings", {})
        for key in sorted(set(theirs) | set(job.settings)):
            if theirs.get(key) != job.settings.get(key):
                raise InputError(f"{job.directory} holds shards made with {key}={theirs.get(key)!r}, "
                                 f"but this run has {key}={job.settings.get(key)!r}; "
                                 f"use the same settings or another --output-dir.")
        if marker.get("shard_size") != job.shard_size:
            raise InputError(f"{job.directory} holds shards of --shard-size {marker.get('shard_size')}, "
                             f"not {job.shard_size}; use the same size or another --output-dir.")


def plan_shards(job: ShardJob) -> Plan:
    """Decide which shards to write: all of them, or with ``resume`` the ones not finished yet.

    Without ``resume``, a directory that already holds this partition's
    shards is refused (rather than overwritten: it may be hours of work).
    """
    job.directory.mkdir(parents=True, exist_ok=True)
    _check_neighbours(job)
    plan = Plan(job=job, todo=[])
    for shard in job.shards():
        marker_path = job.marker(shard.number)
        existing = [p for p in (marker_path, *job.files(shard.number).values()) if p.exists()]
        if not job.resume:
            if existing:
                raise InputError(f"{job.directory} already holds shards of this run ({existing[0].name}); "
                                 f"add --resume to finish it, or choose an empty --output-dir.")
            plan.todo.append(shard)
            continue
        marker = _read_marker(marker_path) if marker_path.exists() else None
        if marker is not None:
            if marker.get("paths_sha256") != shard.fingerprint() or marker.get("inputs") != len(shard.paths):
                raise InputError(f"{marker_path.name} was written for other inputs; resume needs the same "
                                 f"input list, or use another --output-dir.")
            if _files_agree(job, marker):
                plan.done_shards += 1
                plan.done_inputs += marker["inputs"]
                plan.done_failures += marker["errors"]
                continue
        plan.todo.append(shard)
    return plan


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _text(value: str) -> str:
    """A path as valid UTF-8 text: bytes that are not UTF-8 (kept as surrogates) become \\x escapes.

    Parquet strings and JSON files must be UTF-8; a file name from a foreign
    file system must not fail the whole shard.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return os.fsencode(value).decode("utf-8", "backslashreplace")


_FILE_MODE: list[int] = []


def _file_mode() -> int:
    """Permissions a plain ``open()`` would give a new file (0666 less the umask).

    Temporaries come from mkstemp, which makes them private (0600); shards
    are usually read by other people and jobs, so they get the usual mode.
    """
    if not _FILE_MODE:
        umask = os.umask(0o022)
        os.umask(umask)
        _FILE_MODE.append(0o666 & ~umask)
    return _FILE_MODE[0]


def _fsync_replace(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk, then rename it to ``target``: the target is whole or absent."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.fchmod(fd, _file_mode())
    finally:
        os.close(fd)
    os.replace(tmp, target)


def _write_atomic(target: Path, data: bytes) -> None:
    from effnet_cli.writers import temp_path_for

    tmp = temp_path_for(target)
    try:
        tmp.write_bytes(data)
        _fsync_replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _clear_shard(job: ShardJob, number: int) -> None:
    """Remove what an unfinished attempt at a shard left: marker first, then data files and temporaries."""
    job.marker(number).unlink(missing_ok=True)
    targets = list(job.files(number).values())
    if job.kind == "embed":  # both metadata formats: the earlier attempt may have lacked pyarrow
        targets.append(job.directory / job.shard_name("meta", number, ".parquet"))
        targets.append(job.directory / job.shard_name("meta", number, ".jsonl"))
    for target in targets:
        target.unlink(missing_ok=True)
        # Temporaries of a killed attempt (see writers.temp_path_for): ".{name}.XXXX.part".
        for leftover in job.directory.glob(f".{target.name}.*.part"):
            leftover.unlink(missing_ok=True)


def _marker(job: ShardJob, shard: Shard, files: dict[str, str], rows: int, errors: int) -> bytes:
    record = {
        "format": MARKER_FORMAT,
        "kind": job.kind,
        "shard": shard.number,
        "partition": str(job.partition),
        "shard_size": job.shard_size,
        "total_inputs": job.total,
        "first_index": shard.indices[0] if len(shard.indices) else None,
        "inputs": len(shard.paths),
        "rows": rows,
        "errors": errors,
        "paths_sha256": shard.fingerprint(),
        "files": files,
        "settings": job.settings,
    }
    return (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


class _EmbedShardWriter:
    """Streams one embed shard to temporaries and publishes it, marker last, in :meth:`finish`."""

    def __init__(self, job: ShardJob, shard: Shard, dim: int, dtype: Any) -> None:
        from effnet_cli.writers import NpyAppender, temp_path_for

        self.job, self.shard = job, shard
        _clear_shard(job, shard.number)
        self.targets = job.files(shard.number)
        self.npy_tmp = temp_path_for(self.targets["emb"])
        # NpyAppender keeps a standard (v1.0, 128-byte) .npy header valid as rows arrive.
        self.array = NpyAppender(self.npy_tmp, dim, dtype)
        self.meta: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.count = 0

    def add(self, results: Sequence[Any], features: np.ndarray) -> None:
        """Append consecutive inputs of this shard; ``features`` are the rows of the successful ones."""
        if len(features):
            self.array.append(features)
        for result in results:
            index = self.shard.indices[self.count]
            path = _text(self.shard.paths[self.count])
            if result.error is None:
                self.meta.append({"index": index, "path": path, "row": len(self.meta)})
            else:
                self.errors.append({"index": index, "path": path, "row": None, "error": result.error})
            self.count += 1

    @property
    def full(self) -> bool:
        """All inputs of the shard have been added."""
        return self.count == len(self.shard.paths)

    def _write_meta(self, target: Path) -> None:
        if target.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            from effnet_cli.writers import temp_path_for

            table = pa.table({
                "index": pa.array([m["index"] for m in self.meta], pa.int64()),
                "path": pa.array([m["path"] for m in self.meta], pa.string()),
                "row": pa.array([m["row"] for m in self.meta], pa.int64()),
            })
            tmp = temp_path_for(target)
            try:
                pq.write_table(table, tmp)
                _fsync_replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            _write_atomic(target, _jsonl(self.meta))

    def finish(self) -> Summary:
        """Publish the shard's files, then its marker; returns the shard's counts."""
        self.array.close()
        files: dict[str, str] = {}
        try:
            if self.meta:
                _fsync_replace(self.npy_tmp, self.targets["emb"])
                self._write_meta(self.targets["meta"])
                files["emb"], files["meta"] = self.targets["emb"].name, self.targets["meta"].name
        finally:
            self.npy_tmp.unlink(missing_ok=True)
        if self.errors:
            _write_atomic(self.targets["errors"], _jsonl(self.errors))
            files["errors"] = self.targets["errors"].name
        _write_atomic(self.job.marker(self.shard.number),
                      _marker(self.job, self.shard, files, len(self.meta), len(self.errors)))
        return Summary(inputs=self.count, failures=len(self.errors), rows=len(self.meta), shards_written=1)

    def abandon(self) -> None:
        """Close without publishing (interrupted): the temporary is removed, the shard stays unfinished."""
        self.array.close()
        self.npy_tmp.unlink(missing_ok=True)


class _ClassifyShardWriter:
    """Streams one classify shard's records to a temporary and publishes it, marker last."""

    def __init__(self, job: ShardJob, shard: Shard) -> None:
        from effnet_cli.writers import temp_path_for

        self.job, self.shard = job, shard
        _clear_shard(job, shard.number)
        self.target = job.files(shard.number)["pred"]
        self.tmp = temp_path_for(self.target)
        self.fh = open(self.tmp, "w", encoding="utf-8")
        self.count = self.failures = 0

    def add(self, results: Sequence[Any]) -> None:
        """Append consecutive inputs of this shard."""
        from effnet_cli.writers import classify_record

        for result in results:
            record = {"index": self.shard.indices[self.count], **classify_record(result)}
            record["path"] = _text(self.shard.paths[self.count])
            self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.failures += result.error is not None
            self.count += 1

    @property
    def full(self) -> bool:
        """All inputs of the shard have been added."""
        return self.count == len(self.shard.paths)

    def finish(self) -> Summary:
        """Publish the records, then the marker."""
        self.fh.close()
        try:
            _fsync_replace(self.tmp, self.target)
        finally:
            self.tmp.unlink(missing_ok=True)
        _write_atomic(self.job.marker(self.shard.number),
                      _marker(self.job, self.shard, {"pred": self.target.name},
                              self.count - self.failures, self.failures))
        return Summary(inputs=self.count, failures=self.failures, rows=self.count - self.failures,
                       shards_written=1)

    def abandon(self) -> None:
        """Close without publishing (interrupted)."""
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


ProgressFn = Callable[[int], None]
FailureFn = Callable[[Any], None]


def _split_at(results: Sequence[Any], features: np.ndarray | None, room: int) -> tuple[Any, Any, Any, Any]:
    """Split a batch after ``room`` results; features split after the successful ones among them."""
    head = results[:room]
    ok = sum(1 for r in head if r.error is None)
    if features is None:
        return head, None, results[room:], None
    return head, features[:ok], results[room:], features[ok:]


def write_embed_shards(plan: Plan, batches: Iterable[Any], *, dim: int, dtype: Any,
                       on_progress: ProgressFn | None = None, on_failure: FailureFn | None = None) -> Summary:
    """Write ``plan.todo`` from embed batches over ``plan.todo_paths`` (``EmbedBatch``-like, in order).

    Each batch has ``results`` (one per input, in order) and ``features`` (the
    rows of the successful ones, in order). Batches may straddle shards.
    Returns the counts, including the shards ``plan`` kept from earlier.
    """
    summary = Summary(inputs=plan.done_inputs, failures=plan.done_failures, shards_kept=plan.done_shards)
    shards = iter(plan.todo)
    writer: _EmbedShardWriter | None = None
    try:
        for batch in batches:
            results, features = list(batch.results), batch.features
            for result in results:
                if result.error is not None and on_failure is not None:
                    on_failure(result)
            while results:
                if writer is None:
                    shard = next(shards, None)
                    if shard is None:
                        raise RuntimeError("more results than inputs in the shard plan")
                    writer = _EmbedShardWriter(plan.job, shard, dim, dtype)
                room = len(writer.shard.paths) - writer.count
                head, head_feats, results, features = _split_at(results, features, room)
                writer.add(head, head_feats)
                if writer.full:
                    summary.merge(writer.finish())
                    writer = None
            if on_progress is not None:
                on_progress(len(batch.results))
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None or next(shards, None) is not None:
        if writer is not None:
            writer.abandon()
        raise RuntimeError("the results ended before every input of the shard plan was written")
    return summary


def write_classify_shards(plan: Plan, batches: Iterable[Sequence[Any]], *, on_progress: ProgressFn | None = None,
                          on_failure: FailureFn | None = None) -> Summary:
    """Write ``plan.todo`` from per-batch lists of classify results over ``plan.todo_paths``."""
    summary = Summary(inputs=plan.done_inputs, failures=plan.done_failures, shards_kept=plan.done_shards)
    shards = iter(plan.todo)
    writer: _ClassifyShardWriter | None = None
    try:
        for batch in batches:
            results = list(batch)
            for result in results:
                if result.error is not None and on_failure is not None:
                    on_failure(result)
            while results:
                if writer is None:
                    shard = next(shards, None)
                    if shard is None:
                        raise RuntimeError("more results than inputs in the shard plan")
                    writer = _ClassifyShardWriter(plan.job, shard)
                room = len(writer.shard.paths) - writer.count
                writer.add(results[:room])
                results = results[room:]
                if writer.full:
                    summary.merge(writer.finish())
                    writer = None
            if on_progress is not None:
                on_progress(len(batch))
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None or next(shards, None) is not None:
        if writer is not None:
            writer.abandon()
        raise RuntimeError("the results ended before every input of the shard plan was written")
    return summary


# --------------------------------------------------------------------------- #
# Running a partition on one engine
# --------------------------------------------------------------------------- #


def embed_into_shards(engine: Any, job: ShardJob, run: dict[str, Any], *, on_progress: ProgressFn | None = None,
                      on_failure: FailureFn | None = None, on_plan: Callable[[Plan], None] | None = None) -> Summary:
    """Embed a partition into shard files with ``engine``; ``run`` holds :func:`embed_paths`' options.

    ``on_plan`` sees the plan before any work (the CLI advances its progress
    bar past the shards a resume keeps).
    """
    from effnet_cli.inference import embed_paths

    plan = plan_shards(job)
    if on_plan is not None:
        on_plan(plan)
    todo = plan.todo_paths
    batches = embed_paths(engine, todo, **run) if todo else iter(())
    return write_embed_shards(plan, batches, dim=engine.feature_dim(run.get("stage")),
                              dtype=engine.output_numpy_dtype, on_progress=on_progress, on_failure=on_failure)


def classify_into_shards(engine: Any, job: ShardJob, run: dict[str, Any], *,
                         on_progress: ProgressFn | None = None, on_failure: FailureFn | None = None,
                         on_plan: Callable[[Plan], None] | None = None) -> Summary:
    """Classify a partition into ``pred_*.jsonl`` shards; ``run`` holds :func:`classify_paths`' options."""
    from effnet_cli.inference import classify_paths

    plan = plan_shards(job)
    if on_plan is not None:
        on_plan(plan)
    todo = plan.todo_paths
    batches = classify_paths(engine, todo, **run) if todo else iter(())
    return write_classify_shards(plan, batches, on_progress=on_progress, on_failure=on_failure)


# --------------------------------------------------------------------------- #
# Reading back
# --------------------------------------------------------------------------- #


def _markers(directory: Path, stem: str) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        match = _MARKER_RE.match(entry.name)
        if match and match.group(1) == stem:
            marker = _read_marker(Path(entry.path))
            if marker is not None:
                found.append((Path(entry.path), marker))
    return found


def _check_complete(directory: Path, seen: int, markers: list[tuple[Path, dict[str, Any]]]) -> None:
    if not markers:
        raise InputError(f"{directory} holds no finished shards.")
    total = markers[0][1]["total_inputs"]
    if seen != total:
        raise InputError(f"{directory} accounts for {seen} of {total} inputs; finish the run "
                         f"(every --shard job, with --resume) before reading it whole.")


def read_embeddings(directory: str | os.PathLike[str], *, complete: bool = True,
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A finished embed run, in input order: (array, records), however it was partitioned.

    Records are ``{"index", "path", "row", "error"}``, one per input, sorted by
    index; ``row`` indexes the returned array (None for a failed input). This
    loads everything into memory: for large runs stream the shards with numpy
    or embedding-reader instead. With ``complete`` (the default) a run that
    does not account for every input raises :class:`InputError`.
    """
    directory = Path(directory)
    markers = _markers(directory, "emb")
    entries: list[tuple[int, str, np.ndarray | None, str | None]] = []
    for _, marker in markers:
        files = {role: directory / name for role, name in marker["files"].items()}
        if "emb" in files:
            array = np.load(files["emb"])
            for meta in _read_meta(files["meta"]):
                entries.append((meta["index"], meta["path"], array[meta["row"]], None))
        for line in files["errors"].read_text(encoding="utf-8").splitlines() if "errors" in files else ():
            err = json.loads(line)
            entries.append((err["index"], err["path"], None, err["error"]))
    if complete:
        _check_complete(directory, len(entries), markers)
    entries.sort(key=lambda e: e[0])
    vectors = [e[2] for e in entries if e[2] is not None]
    if vectors:
        array = np.stack(vectors)
    else:  # nothing embedded: an empty array of the run's width
        settings = markers[0][1].get("settings", {}) if markers else {}
        dtype = np.float16 if settings.get("dtype") == "float16" else np.float32
        array = np.zeros((0, int(settings.get("dim", 0))), dtype=dtype)
    records, row = [], 0
    for index, path, vector, error in entries:
        records.append({"index": index, "path": path, "row": None if vector is None else row, "error": error})
        row += vector is not None
    return array, records


def _read_meta(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_predictions(directory: str | os.PathLike[str], *, complete: bool = True) -> list[dict[str, Any]]:
    """A finished classify run's records, one per input, in input order (by ``index``)."""
    directory = Path(directory)
    markers = _markers(directory, "pred")
    records = []
    for _, marker in markers:
        text = (directory / marker["files"]["pred"]).read_text(encoding="utf-8")
        records.extend(json.loads(line) for line in text.splitlines())
    if complete:
        _check_complete(directory, len(records), markers)
    return sorted(records, key=lambda r: r["index"])
