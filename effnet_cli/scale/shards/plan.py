"""Planning a run: which shards are finished, which resume mid-way, which start; and the settings check.

Finished shards (marker and files agree) are kept. An unfinished shard with
a partial marker made with the same settings continues after its last
complete record; one made with other settings is refused (exit 2, the
settings named) and left exactly as it is. Without ``--resume`` a directory
that already holds this partition's shards is refused rather than
overwritten (it may be hours of work); ``-o`` simply starts over.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet_cli.data.pathlist import concat
from effnet_cli.errors import InputError
from effnet_cli.output.atomic import make_dir, temporaries_of
from effnet_cli.output.npy import npy_rows
from effnet_cli.output.settings import check_settings
from effnet_cli.records.pathtext import display_path, path_from_fields
from effnet_cli.scale.shards.job import MARKER_FORMAT, Shard, ShardJob

__all__ = ["Todo", "Plan", "Summary", "plan_shards", "read_marker", "recorded_settings", "MARKER_RE"]

MARKER_RE = re.compile(r"^_done_(emb|pred)_(?:p(\d+)of(\d+)_)?(\d+)\.json$")
_PARTIAL_RE = re.compile(r"^\.(emb|pred)_(?:p(\d+)of(\d+)_)?(\d+)\.partial\.json$")


def recorded_settings(job: ShardJob) -> dict[str, Any]:
    """The settings stored in (and checked against) every partial and marker of ``job``."""
    settings = dict(job.settings)
    if job.kind == "embed" and job.single is None:
        settings["meta_format"] = job.meta_format
    return settings


@dataclass
class Todo:
    """A shard still to write: from its first input, or (resuming) after ``start`` inputs already recorded."""

    shard: Shard
    start: int = 0
    rows: int = 0
    failures: int = 0
    records_bytes: int = 0

    @property
    def paths(self) -> list[str]:
        """The inputs the model must still see for this shard."""
        return self.shard.paths[self.start:]


@dataclass
class Plan:
    """What a run still has to do, and what finished shards already hold."""

    job: ShardJob
    todo: list[Todo] = field(default_factory=list)
    kept_inputs: int = 0
    kept_failures: int = 0
    done_shards: int = 0

    @property
    def todo_paths(self) -> Sequence[str]:
        """The inputs still to process, in order: what the model must see."""
        return concat([item.paths for item in self.todo])

    @property
    def done_inputs(self) -> int:
        """Inputs already accounted for (finished shards and the recorded part of resumed ones): progress."""
        return self.kept_inputs + sum(item.start for item in self.todo)


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


def read_marker(path: Path) -> dict[str, Any] | None:
    """A marker (or partial marker) of ours, or None when missing, damaged, or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            marker = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def _complete_lines(path: Path) -> list[bytes]:
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    lines.pop()  # the piece after the last newline: empty, or a record cut short by a kill
    return lines


def _files_agree(job: ShardJob, marker: dict[str, Any]) -> bool:
    """True when the files a marker lists exist and hold the rows it says."""
    try:
        paths = {role: job.directory / name for role, name in marker["files"].items()}
        if not all(p.is_file() for p in paths.values()):
            return False
        if job.kind == "classify":
            return len(_complete_lines(paths["pred"])) == marker["inputs"]
        rows, errors = marker["rows"], marker["errors"]
        dim, dtype = marker["dim"], marker["dtype"]
        if job.single is not None:
            return npy_rows(paths["emb"], dim, dtype) == rows and \
                len(_complete_lines(paths["manifest"])) == marker["inputs"]
        if ("emb" in paths) != (rows > 0) or ("errors" in paths) != (errors > 0):
            return False
        if rows:
            if npy_rows(paths["emb"], dim, dtype) != rows:
                return False
            meta = paths["meta"]
            if meta.suffix == ".parquet":
                import pyarrow.parquet as pq

                if pq.read_metadata(meta).num_rows != rows:
                    return False
            elif len(_complete_lines(meta)) != rows:
                return False
        return not errors or len(_complete_lines(paths["errors"])) == errors
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return False


def _check_marker(job: ShardJob, path: Path, marker: dict[str, Any]) -> None:
    where = display_path(path)
    check_settings(marker.get("settings", {}), recorded_settings(job), where)
    if marker.get("total_inputs") != job.total:
        raise InputError(f"{where} belongs to a run over {marker.get('total_inputs')} inputs, but this one has "
                         f"{job.total}; every job of a run must see the same input list.")
    if job.single is None and marker.get("shard_size") != job.shard_size:
        raise InputError(f"{where} belongs to a run of --shard-size {marker.get('shard_size')}, not "
                         f"{job.shard_size}; use the same size or another --output-dir.")


def _check_neighbours(job: ShardJob) -> None:
    """Refuse a directory whose markers or partials were made by a differently split or configured run.

    Jobs of one run (``--shard I/N`` for each I, or one per device) share a
    directory; a second run with another split would make readers see some
    inputs twice, and one with other settings would mix incomparable rows.
    """
    if job.single is not None:
        for path in (job.marker(0), job.partials(0)["marker"]):
            marker = read_marker(path)
            if marker is not None and job.resume:
                _check_marker(job, path, marker)
        return
    for entry in os.scandir(job.directory):
        match = MARKER_RE.match(entry.name) or _PARTIAL_RE.match(entry.name)
        if not match or match.group(1) != job.stem:
            continue
        count = int(match.group(3) or 1)
        if count != job.partition.count:
            raise InputError(f"{display_path(job.directory)} already holds shards of a run split into {count} "
                             f"partition{'s' if count != 1 else ''}; use the same --shard/--devices split "
                             f"or another --output-dir.")
        marker = read_marker(Path(entry.path))
        if marker is not None:  # a damaged marker of our own partition is redone; of another job's, not ours
            _check_marker(job, Path(entry.path), marker)


def _recover(job: ShardJob, shard: Shard) -> Todo:
    """Where an unfinished shard stopped, from its partial files; a fresh start when they are unusable."""
    partials = job.partials(shard.number)
    marker = read_marker(partials["marker"])
    if marker is None:
        return Todo(shard)
    if marker.get("paths_sha256") != shard.fingerprint():
        raise InputError(f"{display_path(partials['marker'])} was written for other inputs; resume needs the "
                         f"same input list, or use another output.")
    if any(os.path.islink(p) for p in partials.values()):
        return Todo(shard)  # not ours: never read or written through; the shard starts over
    try:
        lines = _complete_lines(partials["records"])
    except OSError:
        return Todo(shard)
    start = rows = failures = size = 0
    for line in lines:
        try:
            record = json.loads(line)
            same = (record.get("index") == shard.indices[start] and path_from_fields(record) == shard.paths[start])
        except (ValueError, KeyError, IndexError, AttributeError):
            same = False
        if not same:
            break
        start += 1
        size += len(line) + 1
        failures += record.get("error") is not None
        rows += job.kind == "embed" and record.get("row") is not None
    if job.kind == "embed" and npy_rows(partials["emb"], marker["dim"], marker["dtype"]) < rows:
        return Todo(shard)  # the array lost rows its records name: redo this shard
    return Todo(shard, start=start, rows=rows, failures=failures, records_bytes=size)


def remove_temporaries(job: ShardJob, number: int, targets: list[Path] | None = None) -> None:
    """Remove the temporaries a killed write of shard ``number``'s files left (our own names only).

    A process killed between creating a temporary and renaming it leaves
    ``.{name}.{random}.part`` beside the target; nothing else carries that name.
    """
    names = [*job.files(number).values(), *job.partials(number).values(), job.marker(number), *(targets or [])]
    for path in temporaries_of(job.directory, names):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # removes a symlink itself, never what it points to


def _unlink_partials(job: ShardJob, shard: Shard) -> None:
    for path in job.partials(shard.number).values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def plan_shards(job: ShardJob) -> Plan:
    """Decide what to write: every shard, or with ``resume`` the ones not finished yet (unfinished ones resume)."""
    make_dir(job.directory)
    _check_neighbours(job)
    plan = Plan(job=job)
    for shard in job.shards():
        marker_path = job.marker(shard.number)
        if not job.resume:
            if job.single is None:
                candidates = (marker_path, *job.files(shard.number).values(), *job.partials(shard.number).values())
                existing = [p for p in candidates if os.path.lexists(p)]
                if existing:
                    raise InputError(f"{display_path(job.directory)} already holds shards of this run "
                                     f"({display_path(existing[0].name)}); add --resume to finish it, or choose "
                                     f"an empty --output-dir.")
            plan.todo.append(Todo(shard))
            continue
        remove_temporaries(job, shard.number)  # under the lock: no other writer's temporaries can be there
        marker = read_marker(marker_path)
        if marker is not None:
            if marker.get("paths_sha256") != shard.fingerprint() or marker.get("inputs") != len(shard.paths):
                raise InputError(f"{display_path(job.output)} was written for other inputs; resume needs the "
                                 f"same input list, or use another output.")
            if _files_agree(job, marker):
                _unlink_partials(job, shard)  # a run killed between its marker and its clean-up
                plan.done_shards += 1
                plan.kept_inputs += marker["inputs"]
                plan.kept_failures += marker["errors"]
                continue
        plan.todo.append(_recover(job, shard))
    return plan
