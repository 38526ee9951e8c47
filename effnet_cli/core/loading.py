"""``load_pretrained``: a name -> the model and the preprocessing that travels with its weights, strictly.

The name becomes files (:func:`effnet_cli.weights.resolve.resolve_files`: the bundled
Lite0 weights, the Hugging Face cache, or a local directory), the tensors are read
safely, every one is checked against the model (any mismatch is an error, unlike
``from_pretrained``), and the model comes back in eval mode with its processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet_cli.core.checkpoint import build_empty, load_weights
from effnet_cli.core.config import EfficientNetConfig
from effnet_cli.core.config_v2 import read_config
from effnet_cli.core.dtypes import parse_dtype
from effnet_cli.errors import ConfigError, LoadError
from effnet_cli.weights.files import CONFIG_NAME, PROCESSOR_NAME, weights_file
from effnet_cli.weights.presets import hub_preprocessing
from effnet_cli.weights.resolve import resolve_files
from effnet_cli.weights.state_dict import read_state_dict

if TYPE_CHECKING:
    import torch

    from effnet_cli.core.model import EfficientNetPreTrainedModel
    from effnet_cli.core.processor import EfficientNetImageProcessor


def default_processor(config: EfficientNetConfig) -> EfficientNetImageProcessor:
    """The hub's EfficientNet preprocessing at the config's native size, for checkpoints without one."""
    from effnet_cli.core.processor import EfficientNetImageProcessor

    return EfficientNetImageProcessor.from_dict(hub_preprocessing(config.image_size))


def load_directory(directory: Path, *, model_class: type | None = None
                   ) -> tuple[EfficientNetPreTrainedModel, EfficientNetImageProcessor]:
    """Build the model and processor a loadable directory describes."""
    from effnet_cli.core.model_v2 import model_class_for
    from effnet_cli.core.processor import EfficientNetImageProcessor

    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise LoadError(f"{directory} has no {CONFIG_NAME}.")
    try:
        config = read_config(config_path)  # V1 or V2, by model_type
    except ConfigError as exc:
        raise type(exc)(f"{config_path}: {exc}") from None  # the same class: a missing file stays an OSError
    weights = weights_file(directory)
    model = build_empty(model_class_for(config, model_class), config)
    load_weights(model, read_state_dict(weights), source=str(weights))
    processor_path = directory / PROCESSOR_NAME
    processor = (EfficientNetImageProcessor.from_json_file(processor_path) if processor_path.is_file()
                 else default_processor(config))
    return model.eval(), processor


def load_pretrained(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                    local_files_only: bool | None = None, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None, model_class: type | None = None,
                    torch_dtype: str | torch.dtype | None = None,
                    ) -> tuple[EfficientNetPreTrainedModel, EfficientNetImageProcessor]:
    """Load a model and its preprocessing by variant name, hub id, or local directory.

    ``name_or_path``: ``b0`` … ``b7`` (``google/efficientnet-b*`` on the hub),
    ``lite0`` (real ImageNet weights bundled with effnet, no network needed), a
    hub repository id, or a directory with config.json and model.safetensors (or
    pytorch_model.bin). Hub files go through huggingface_hub's cache
    (``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``); once cached,
    no network is used. The model is returned in eval mode; where the weights
    came from is in ``model.source`` (for the hub, the exact commit). ``torch_dtype``
    is transformers' older spelling of ``dtype``. Unlike ``from_pretrained``, any
    tensor that does not fit the model is an error here.
    """
    if dtype is None:
        dtype = torch_dtype
    directory, source = resolve_files(name_or_path, revision=revision, cache_dir=cache_dir,
                                      local_files_only=local_files_only)
    model, processor = load_directory(directory, model_class=model_class)
    model.source = source
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=parse_dtype(dtype))
    return model, processor


def load_model(name_or_path: str | Path, *, model_class: type, **kwargs: Any) -> EfficientNetPreTrainedModel:
    """:func:`load_pretrained` without the processor."""
    model, _ = load_pretrained(name_or_path, model_class=model_class, **kwargs)
    return model
