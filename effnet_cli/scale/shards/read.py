"""Reading a finished run back in input order, however it was partitioned.

Records are split on ``\\n`` only and paths come back through
:func:`effnet_cli.records.pathtext.path_from_fields`, so every name the filesystem
allows (newlines, U+2028, bytes that are not UTF-8) returns exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import path_from_fields, split_records
from effnet_cli.scale.shards.plan import MARKER_RE, read_marker

__all__ = ["read_embeddings", "read_predictions", "read_jsonl"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file of ours (split on ``\\n`` only)."""
    return [json.loads(line) for line in split_records(Path(path).read_bytes().decode("utf-8"))]


def _markers(directory: Path, stem: str) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        match = MARKER_RE.match(entry.name)
        if match and match.group(1) == stem:
            marker = read_marker(Path(entry.path))
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


def _read_meta(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        # Not pq.read_table: its dataset reader's thread pools made the process abort at exit
        # ("terminate called without an active exception") in 3-10 of 50 runs on a busy machine;
        # one thread without pre-buffering never did (0 of 150).
        return pq.ParquetFile(path, pre_buffer=False).read(use_threads=False).to_pylist()
    return read_jsonl(path)


def read_embeddings(directory: str | os.PathLike[str], *, complete: bool = True,
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A finished embed run, in input order: (array, records), however it was partitioned.

    Records are ``{"index", "path", "row", "error"}``, one per input, sorted by
    index; ``path`` is the exact ``str`` that :func:`open` accepts and ``row``
    indexes the returned array (None for a failed input). This loads
    everything into memory: for large runs stream the shards with numpy or
    embedding-reader instead. With ``complete`` (the default) a run that does
    not account for every input raises :class:`InputError`.
    """
    directory = Path(directory)
    markers = _markers(directory, "emb")
    entries: list[tuple[int, str, np.ndarray | None, str | None]] = []
    for _, marker in markers:
        files = {role: directory / name for role, name in marker["files"].items()}
        if "emb" in files:
            array = np.load(files["emb"])
            for meta in _read_meta(files["meta"]):
                entries.append((meta["index"], path_from_fields(meta), array[meta["row"]], None))
        for err in read_jsonl(files["errors"]) if "errors" in files else ():
            entries.append((err["index"], path_from_fields(err), None, err["error"]))
    if complete:
        _check_complete(directory, len(entries), markers)
    entries.sort(key=lambda e: e[0])
    vectors = [e[2] for e in entries if e[2] is not None]
    if vectors:
        array = np.stack(vectors)
    else:  # nothing embedded: an empty array of the run's width
        marker = markers[0][1] if markers else {}
        array = np.zeros((0, int(marker.get("dim", 0))), dtype=np.dtype(marker.get("dtype", "<f4")))
    records, row = [], 0
    for index, path, vector, error in entries:
        records.append({"index": index, "path": path, "row": None if vector is None else row, "error": error})
        row += vector is not None
    return array, records


def read_predictions(directory: str | os.PathLike[str], *, complete: bool = True) -> list[dict[str, Any]]:
    """A finished classify run's records, one per input, in input order (by ``index``); exact paths."""
    directory = Path(directory)
    markers = _markers(directory, "pred")
    records = []
    for _, marker in markers:
        for record in read_jsonl(directory / marker["files"]["pred"]):
            record["path"] = path_from_fields(record)
            record.pop("path_bytes", None)
            records.append(record)
    if complete:
        _check_complete(directory, len(records), markers)
    return sorted(records, key=lambda r: r["index"])
