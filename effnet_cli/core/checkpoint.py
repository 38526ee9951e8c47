"""A model and its weight files: build it without random init, fit a state dict strictly, save it.

:func:`build_empty` is the one place a model is built on the meta device and
given uninitialised CPU storage (the weights replace it at once). :func:`load_weights`
copies a state dict in after checking every name and shape: a mismatch is an error
that names the tensors, never a partial load. :func:`save_pretrained` writes the
directory ``load_pretrained`` and transformers both read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from effnet_cli.errors import WeightsError
from effnet_cli.weights.state_dict import align_prefix as align_keys
from effnet_cli.weights.state_dict import describe_problems, fit_state, save_state_dict
from effnet_cli.weights.files import CONFIG_NAME, PROCESSOR_NAME, SAFETENSORS_NAME

if TYPE_CHECKING:
    import torch
    from torch import nn

M = TypeVar("M", bound="nn.Module")


def build_empty(cls: type[M], config: Any) -> M:
    """``cls(config)`` on the CPU with uninitialised weights: no time spent on a random init the weights replace."""
    import torch

    with torch.device("meta"):
        model = cls(config)
    return model.to_empty(device="cpu")


def align_prefix(model: nn.Module, state_dict: dict[str, torch.Tensor], *,
                 drop_head: bool) -> dict[str, torch.Tensor]:
    """``state_dict`` with the ``efficientnet.`` prefix added or removed to fit ``model``, as transformers does."""
    return align_keys(model.state_dict(), state_dict, model.base_model_prefix + ".", drop_head=drop_head)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], *,
                 source: str = "checkpoint") -> None:
    """Copy ``state_dict`` into ``model`` after checking every name and shape.

    Accepts a base-model checkpoint for a classifier (and vice versa) the way
    transformers does, by adding or dropping the ``efficientnet.`` prefix; any
    other mismatch is an error that names the tensors, never a partial load.
    """
    state_dict = align_prefix(model, state_dict, drop_head=True)
    fit = fit_state(model.state_dict(), state_dict)
    wrong = sorted(f"{k} {tuple(got)} (model has {tuple(want)})" for k, got, want in fit.mismatched)
    problems = describe_problems([("missing", sorted(fit.missing)), ("unexpected", sorted(fit.unexpected)),
                                        ("mis-shaped", wrong)], limit=5)
    if problems:
        raise WeightsError(f"{source} does not fit this model's config: {problems}.")
    model.load_state_dict(state_dict, strict=True)


def config_json(model: nn.Module, **overrides: Any) -> str:
    """The config.json text of a saved model: its config, ``architectures`` (unless it names one) and ``overrides``."""
    config = model.config.to_diff_dict()  # what transformers writes: base-config keys only where not default
    config.setdefault("architectures", [type(model).__name__])
    config.update(overrides)
    return json.dumps(config, indent=2, sort_keys=True) + "\n"  # ASCII-escaped, byte for byte as transformers writes


def save_pretrained(model: nn.Module, directory: str | Path,
                    processor: Any | None = None) -> Path:
    """Write config.json, model.safetensors and (when given) the processor's preprocessor_config.json to ``directory``."""
    from effnet_cli.output import make_dir, write_text

    directory = make_dir(directory)
    write_text(directory / CONFIG_NAME, config_json(model))
    save_state_dict(model.state_dict(), directory / SAFETENSORS_NAME)
    if processor is not None:
        processor.to_json_file(directory / PROCESSOR_NAME)
    return directory
