"""The files of a model directory, as transformers names them."""

from __future__ import annotations

from pathlib import Path

from effnet_cli.errors import LoadError

CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
WEIGHT_NAMES = (SAFETENSORS_NAME, PICKLE_NAME)  # in the order a loader prefers them


def weights_file(directory: Path) -> Path:
    """The weights of a model directory: ``model.safetensors``, else ``pytorch_model.bin``."""
    for name in WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise LoadError(f"{directory} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}.")
