"""The files effnet writes into a model directory: the only ones ``convert --overwrite`` may replace."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODEL_DIR_FILES", "foreign_files"]

# What `convert`, `save_pretrained` and the weights caches put in a model directory.
MODEL_DIR_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def foreign_files(directory: Path, own: tuple[str, ...] = MODEL_DIR_FILES) -> list[str]:
    """Names in ``directory`` that effnet did not write there (sorted); empty when it holds only ours."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name not in own or not p.is_file() or p.is_symlink())
