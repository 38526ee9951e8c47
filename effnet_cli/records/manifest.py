"""Manifest records and ``--per-file`` names (classify's stdout records live in effnet_cli.records.stream).

Writers take :class:`effnet_cli.records.results.Result` objects in input order and
never hold the whole run in memory. Files are published through
:mod:`effnet_cli.output` (atomic, exclusive temporaries, the umask's modes);
paths appear as :mod:`effnet_cli.records.pathtext` says.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import display_path, path_fields
from effnet_cli.records.stream import MACHINE_FORMATS, RecordWriter, classify_record
from effnet_cli.records.results import Result

NAME_MAX = 255  # bytes in one file name on every common Linux filesystem
__all__ = [
    "MACHINE_FORMATS",
    "RecordWriter",
    "classify_record",
    "manifest_record",
    "per_file_target",
    "per_file_targets",
]


def manifest_record(result: Result, **extra: Any) -> dict[str, Any]:
    """One manifest line: the path (see :mod:`effnet_cli.records.pathtext`) and row (None when failed), the error if any."""
    record: dict[str, Any] = {**path_fields(result.path), "row": result.row}
    record.update(extra)
    if result.error is not None:
        record["error"] = result.error
    return record


def _fit_name(name: str, suffix: str = ".npy") -> str:
    """``name`` + ``suffix``, cut to NAME_MAX bytes with a hash of the full name when it is too long."""
    end = os.fsencode(suffix)
    raw = os.fsencode(name) + end
    if len(raw) <= NAME_MAX:
        return os.fsdecode(raw)
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16].encode()
    return os.fsdecode(os.fsencode(name)[:NAME_MAX - len(digest) - 1 - len(end)] + b"~" + digest + end)


def per_file_target(directory: Path, path: str, suffix: str = ".npy") -> Path:
    """Where ``--per-file`` writes one input's features: its path mirrored under ``directory``, plus .npy.

    Absolute paths lose their anchor and ``..`` parts are dropped, so nothing is
    ever written outside ``directory``; the full file name is kept (cat.jpg ->
    cat.jpg.npy) so cat.jpg and cat.png do not collide. A name that would
    exceed NAME_MAX with ``.npy`` is cut and ends in ``~`` and 16 hex digits of
    its hash. Different inputs can still meet (``../a/x.jpg`` and ``a/x.jpg``):
    :func:`per_file_targets` refuses those. ``effnet explain`` names its files the same way, with
    its own ``suffix`` (``cat.jpg.285.png``).
    """
    parts = [p for p in Path(path).parts if p not in ("..", ".") and p != Path(path).anchor]
    return directory.joinpath(*parts[:-1], _fit_name(parts[-1], suffix)) if parts else directory / f"input{suffix}"


def per_file_targets(directory: Path, paths: list[str], suffix: str = ".npy", option: str = "--per-file",
                     instead: str = " (or use -o / --output-dir)") -> dict[str, Path]:
    """Every input's ``--per-file`` target, refusing (before anything is written) two inputs that would share one."""
    targets: dict[str, Path] = {}
    owner: dict[Path, str] = {}
    for path in paths:
        target = per_file_target(directory, path, suffix)
        other = owner.setdefault(target, path)
        if other != path:
            raise InputError(f"{option} would write {display_path(other)!r} and {display_path(path)!r} to the same "
                             f"file {display_path(target)!r}; give inputs whose paths differ below a common folder"
                             f"{instead}.")
        targets[path] = target
    return targets
