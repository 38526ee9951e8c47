"""effnet's cache of exports: each model exported once per format and reused by every later run.

:func:`cached_export` keys each export by everything that changes its contents (:func:`export_key`:
the weights, the dtype, the input size, the format and the versions of the exporter and the
runtime). Concurrent runs are safe: one exports while the others wait on a lock
(:class:`effnet_cli.output.OutputLock` in its waiting mode), and an export only ever appears
under its final name complete (written into a temporary directory, then renamed).
:func:`runner_for` opens the cached export in its runtime.

A cache that cannot be written (read-only, no permission, a full disk or a quota while the export
is written) does not fail the run: the export is made into a private temporary directory for this
process only, removed when it exits, and one :class:`~effnet_cli.errors.EffnetWarning` says so.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from effnet_cli.errors import EffnetWarning, UnwritableOutputError
from effnet_cli.host import EFFNET_VERSION, package_version
from effnet_cli.output import OutputLock, cause_of, publish_dir, temp_dir, writing
from effnet_cli.runtime.runners import FORMAT_OF, GRAPH_VERSION, model_file, open_runner

# effnet_cli.runtime.export is imported inside the functions that need it: it imports torch (2.5 s),
# which choosing a backend, or finding an export that is cached already, does not need.

__all__ = ["FORMAT_OF", "cache_lock", "cached_export", "export_key", "export_versions", "is_cached", "runner_for",
           "weights_hash", "writable_dir"]



def weights_hash(model: Any) -> str:
    """sha256 over the model's config and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    import torch

    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)  # numpy has no bfloat16; the bytes are what matter
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def export_versions(fmt: str) -> dict[str, str]:
    """Versions of everything that shapes an export of format ``fmt`` ("-" for a package not installed)."""
    import torch

    from effnet_cli.runtime.export import OPSET

    found = {"effnet": EFFNET_VERSION, "graph": str(GRAPH_VERSION), "opset": str(OPSET), "torch": torch.__version__}
    for name in ("onnx", "onnxscript") + (("openvino",) if fmt == "openvino" else ()):
        found[name] = package_version(name)  # a missing package simply is not part of the key
    return found


def export_key(model: Any, processor: Any, fmt: str, dtype: str, weights: str | None = None) -> str:
    """The cache key of an export: weights, preprocessing, input size, format, dtype and tool versions.

    ``weights`` is :func:`weights_hash` of ``model`` when the caller has it already (None: computed here).
    """
    from effnet_cli.runtime.export import fixed_input_size

    parts = {"weights": weights or weights_hash(model), "size": list(fixed_input_size(processor)), "format": fmt,
             "dtype": dtype, "versions": export_versions(fmt), "model_class": type(model).__name__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


_UNCACHED: set[Path] = set()  # this process's private exports, made when the cache could not be written


def is_cached(directory: Path) -> bool:
    """Whether an export directory :func:`cached_export` returned is in the cache (else private to this run)."""
    return Path(directory) not in _UNCACHED


def writable_dir(directory: Path) -> Path:
    """``directory``, created if needed; an InputError saying what to do when it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an InputError (exit status 2) and an OSError
        raise UnwritableOutputError(f"Cannot write effnet's cache at {directory} ({exc.strerror or exc}); set "
                                    "EFFNET_CACHE to a writable directory, or use --backend torch.",
                                    exc.errno) from None
    return directory


def cache_lock(entry: Path) -> OutputLock:
    """The lock of the cache entry ``entry`` (``ENTRY.lock`` beside it): a second run waits for the first."""
    return OutputLock(entry.with_name(entry.name + ".lock"), entry, wait=True)


def cached_export(model: Any, processor: Any, fmt: str, dtype: str = "float32", *,
                  cache: Path | None = None, weights: str | None = None) -> Path:
    """The directory of a cached export of ``model`` (made now if missing); safe under concurrent runs.

    The first run to need an export takes a lock beside it and writes it into a
    temporary directory that is renamed into place when complete; runs that
    come meanwhile wait on the lock and then use the finished export.
    """
    from effnet_cli.weights.resolve import cache_root

    # The weights are hashed once here, not again for the ONNX export an OpenVINO one is converted from.
    weights = weights or weights_hash(model)
    root = cache or cache_root()
    try:
        return _export_into_cache(model, processor, fmt, dtype, cache, weights, root / "exports" / fmt)
    except OSError as exc:  # read-only, no permission, full disk, quota: this run goes on without the cache
        warnings.warn(f"effnet's cache at {root} cannot be written ({cause_of(exc)}); exporting for this run only. "
                      f"Set EFFNET_CACHE to a writable directory to keep exports.", EffnetWarning, stacklevel=2)
        return _export_uncached(model, processor, fmt, dtype, cache, weights)


def _export_uncached(model: Any, processor: Any, fmt: str, dtype: str, cache: Path | None, weights: str) -> Path:
    """An export into a private temporary directory, removed when this process exits."""
    from effnet_cli.runtime.export import write_export

    directory = Path(tempfile.mkdtemp(prefix="effnet-export-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    _UNCACHED.add(directory)
    source = (model_file(cached_export(model, processor, "onnx", "float32", cache=cache, weights=weights), "onnx")
              if fmt == "openvino" else None)
    with writing(directory, restate=True):
        write_export(model, processor, directory, fmt=fmt, dtype=dtype, onnx_source=source)
    return directory


def _export_into_cache(model: Any, processor: Any, fmt: str, dtype: str, cache: Path | None, weights: str,
                       root: Path) -> Path:
    from effnet_cli.runtime.export import write_export

    root = writable_dir(root)
    final = root / export_key(model, processor, fmt, dtype, weights)
    if model_file(final, fmt).is_file():
        return final
    # OpenVINO converts the (cached) float32 ONNX export rather than exporting again.
    source = (model_file(cached_export(model, processor, "onnx", "float32", cache=cache, weights=weights), "onnx")
              if fmt == "openvino" else None)
    with cache_lock(final):
        if model_file(final, fmt).is_file():  # another run finished it while we waited
            return final
        tmp = temp_dir(final)  # under the lock: publish_dir cannot meet another writer's directory
        try:
            with writing(final, restate=True):
                write_export(model, processor, tmp, fmt=fmt, dtype=dtype, onnx_source=source)
            publish_dir(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def runner_for(model: Any, processor: Any, backend: str, *, dtype: str, device_type: str, batch: int = 16,
               weights: str | None = None, files: str | Path | None = None, threads: int | None = None) -> Any:
    """Export ``model`` for ``backend`` (or reuse the cached export) and open it in that runtime.

    ``weights`` is :func:`weights_hash` of ``model`` when the caller has it already (None: computed here).
    ``files``: the model's directory (config.json, weights), whose export is then recorded in the
    torch-free index (:mod:`effnet_cli.runtime.index`), so later runs find it without loading torch.
    ``threads``: the runner's CPU threads (see :func:`effnet_cli.runtime.runners.open_runner`).
    """
    fmt = FORMAT_OF[backend]
    # The cached OpenVINO IR is float32; bfloat16 is the precision it is compiled with.
    directory = cached_export(model, processor, fmt, "float32", weights=weights)
    if files is not None and is_cached(directory) and processor.input_size == _files_input_size(files):
        from effnet_cli.runtime.index import record_export

        record_export(files, fmt, directory)
    return open_runner(model_file(directory, fmt), fmt, dtype=dtype, device_type=device_type, batch=batch,
                       threads=threads)


def _files_input_size(files: str | Path) -> tuple[int, int] | None:
    """The input size of the preprocessing saved in ``files`` (the hub default's when none is saved)."""
    from effnet_cli.core.config_v2 import read_config
    from effnet_cli.core.processor import EfficientNetImageProcessor
    from effnet_cli.weights.presets import hub_preprocessing

    path = Path(files) / "preprocessor_config.json"
    try:
        processor = (EfficientNetImageProcessor.from_json_file(path) if path.is_file() else
                     EfficientNetImageProcessor.from_dict(hub_preprocessing(
                         read_config(Path(files) / "config.json").image_size)))
    except Exception:
        return None
    return processor.input_size
