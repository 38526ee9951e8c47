"""A torch-free index of effnet's export cache: which cached export belongs to a model's files.

The export cache (:mod:`effnet_cli.runtime.cache`) is keyed by a hash of the model's tensors,
which needs the PyTorch model, and so torch (2.5 s, about 1 GB). This index maps what can be
read without torch, the model directory's files, to the cached export directory, so that a
later run finds the export and starts without torch (:mod:`effnet_cli.runtime.lean`).

A model's identity is its config.json and preprocessor_config.json (their bytes, hashed) and
its weights file (real path, size and modification time: hashing a 250 MB b7 file on every
start would cost as much as the start-up it saves; a file replaced in place changes its
mtime), with effnet's version and the exported graph's, so that an export of an older graph
is not found and is made again. Each entry is one small JSON file under ``CACHE/exports/index/``, written atomically:

* ``MODEL.FORMAT.json``: the export of format "onnx" or "openvino" (float32), and its input size;
* ``MODEL.choice-bN.json``: the backend ``auto`` measured fastest at batch size N;
* ``MODEL.runtime-choice-bN.json``: the faster of the two runtimes at batch size N, measured by the
  Python API's ``backend="auto"`` (:class:`effnet_cli.runtime.pretrained.RuntimeModel`), which runs
  only exports and so leaves PyTorch out of the comparison.

An entry whose export directory has gone is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from effnet_cli.host import EFFNET_VERSION
from effnet_cli.output import write_text
from effnet_cli.runtime.runners import FILE_OF, GRAPH_VERSION
from effnet_cli.weights.files import CONFIG_NAME, PROCESSOR_NAME, weights_file

__all__ = ["find_choice", "find_export", "model_identity", "record_choice", "record_export"]


def model_identity(directory: str | Path) -> dict[str, Any] | None:
    """What identifies the model in ``directory`` without loading it; None when it has no config or weights."""
    directory = Path(directory)
    try:
        weights = weights_file(directory)
        stat = weights.stat()
        config = hashlib.sha256((directory / CONFIG_NAME).read_bytes()).hexdigest()
        processor_path = directory / PROCESSOR_NAME
        processor = hashlib.sha256(processor_path.read_bytes()).hexdigest() if processor_path.is_file() else None
    except Exception:  # no weights, unreadable files: simply not indexable
        return None
    return {"weights": os.path.realpath(weights), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "config": config, "processor": processor, "effnet": EFFNET_VERSION, "graph": GRAPH_VERSION}


def _entry(directory: str | Path, suffix: str, cache: Path | None) -> Path | None:
    from effnet_cli.weights.resolve import cache_root

    identity = model_identity(directory)
    if identity is None:
        return None
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return (cache or cache_root()) / "exports" / "index" / f"{key}.{suffix}.json"


def _read(entry: Path | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    try:
        data = json.loads(entry.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(entry: Path | None, data: dict[str, Any]) -> None:
    if entry is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_text(entry, json.dumps(data, indent=2))
    except OSError:  # an unwritable cache only costs later runs their torch-free start
        pass


def record_export(directory: str | Path, fmt: str, export: str | Path, *, cache: Path | None = None) -> None:
    """Remember that ``export`` (a cached float32 export of format ``fmt``) holds the model in ``directory``."""
    _write(_entry(directory, fmt, cache), {"format": fmt, "dtype": "float32", "export": str(export),
                                           "model": str(directory)})


def find_export(directory: str | Path, fmt: str, *, cache: Path | None = None) -> Path | None:
    """The cached export of format ``fmt`` of the model in ``directory``, or None when there is none."""
    data = _read(_entry(directory, fmt, cache))
    if data is None or not isinstance(data.get("export"), str):
        return None
    export = Path(data["export"])
    return export if (export / FILE_OF[fmt]).is_file() else None


def _choice_name(batch: int, runtimes_only: bool) -> str:
    return f"{'runtime-' if runtimes_only else ''}choice-b{batch}"


def record_choice(directory: str | Path, batch: int, backend: str, *, runtimes_only: bool = False,
                  cache: Path | None = None) -> None:
    """Remember the backend ``auto`` chose for the model in ``directory`` at batch size ``batch``.

    ``runtimes_only``: a choice between ONNX Runtime and OpenVINO alone (PyTorch was not a candidate).
    """
    _write(_entry(directory, _choice_name(batch, runtimes_only), cache),
           {"backend": backend, "batch": batch, "model": str(directory)})


def find_choice(directory: str | Path, batch: int, *, runtimes_only: bool = False,
                cache: Path | None = None) -> str | None:
    """The backend ``auto`` measured fastest for this model at ``batch``, or None when none was measured."""
    data = _read(_entry(directory, _choice_name(batch, runtimes_only), cache))
    backend = None if data is None else data.get("backend")
    return backend if isinstance(backend, str) else None
