"""The files effnet writes into a model or export directory: the only ones ``--overwrite`` may replace there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = ["EXPORT_DIR_FILES", "MODEL_DIR_FILES", "foreign_files", "owned_by"]

# What `convert`, `save_pretrained` and the weights caches put in a model directory.
MODEL_DIR_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# What `effnet export` puts in its directory, in either format (effnet_cli.runtime.export).
EXPORT_DIR_FILES = ("config.json", "model.bin", "model.onnx", "model.xml", "preprocessor_config.json")


def owned_by(directory: Path, own: tuple[str, ...] = MODEL_DIR_FILES) -> Callable[[str], bool]:
    """Whether a name in ``directory`` is effnet's: one of ``own``, and a plain file (not a link or a directory).

    The test :func:`effnet_cli.output.targets.check_dir` takes as ``own``.
    """
    return lambda name: name in own and (directory / name).is_file() and not (directory / name).is_symlink()


def foreign_files(directory: Path, own: tuple[str, ...] = MODEL_DIR_FILES) -> list[str]:
    """Names in ``directory`` that effnet did not write there (sorted); empty when it holds only ours."""
    if not directory.is_dir():
        return []
    ours = owned_by(directory, own)
    return sorted(p.name for p in directory.iterdir() if not ours(p.name))
