"""``from_pretrained`` with transformers' keywords: head swaps, loading reports, dtypes, in-memory weights.

:func:`effnet_cli.load_pretrained` (the CLI's loader) refuses any checkpoint that
does not fit the model exactly. Fine-tuning code written for transformers asks
for more: a new head (``num_labels=N, ignore_mismatched_sizes=True``), a base
checkpoint under a classifier, a report of what was and was not loaded
(``output_loading_info=True``), weights already in memory
(``from_pretrained(None, config=..., state_dict=...)``). This module gives those
the reference's semantics: tensors that are missing, or whose shape changed with
``ignore_mismatched_sizes``, are initialised as the reference initialises them and
named in the report; a shape mismatch without that flag is an error.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effnet_cli.core.checkpoint import align_prefix, build_empty
from effnet_cli.core.config import EfficientNetConfig
from effnet_cli.core.dtypes import parse_dtype
from effnet_cli.core.hub_mixin import Located
from effnet_cli.errors import ConfigError, WeightsError
from effnet_cli.weights.files import CONFIG_NAME, weights_file
from effnet_cli.weights.state_dict import fit_state, read_state_dict


class MismatchedSizesError(WeightsError, RuntimeError):
    """A checkpoint tensor has another shape than the model's, and ``ignore_mismatched_sizes`` is off.

    Also a ``RuntimeError``, which is what transformers raises here, so ``except`` clauses written for it still work.
    """


@dataclass
class LoadingInfo:
    """What ``from_pretrained`` did with each tensor, as transformers' ``output_loading_info`` reports it."""

    missing_keys: set[str] = field(default_factory=set)  # in the model, not in the checkpoint: initialised
    unexpected_keys: set[str] = field(default_factory=set)  # in the checkpoint, not in the model: ignored
    mismatched_keys: set[tuple[str, torch.Size, torch.Size]] = field(default_factory=set)  # (key, checkpoint, model)
    error_msgs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The dict transformers 5 returns beside the model."""
        return {"missing_keys": set(self.missing_keys), "unexpected_keys": set(self.unexpected_keys),
                "mismatched_keys": set(self.mismatched_keys), "error_msgs": list(self.error_msgs)}


# The model classes sit above this module (their from_pretrained calls it), so they are typed as nn.Module here.
def from_pretrained(cls: type[nn.Module], located: Located, *,
                    config: EfficientNetConfig | str | Path | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None,
                    ignore_mismatched_sizes: bool = False, output_loading_info: bool = False,
                    dtype: str | torch.dtype | None = None, torch_dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None, device_map: str | torch.device | None = None,
                    **kwargs: Any) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Build ``cls`` from the located checkpoint (directory, variant name, hub id) or from ``config`` + ``state_dict``.

    Other keyword arguments are config changes applied before the model is built
    (``num_labels``, ``id2label``, ``label2id``, ``output_hidden_states``...), as in
    transformers. The model comes back in eval mode.
    """
    config = _config_for(located, config, cls.config_class)
    unknown = sorted(k for k in kwargs if not _is_config_key(config, k))
    if unknown:
        raise TypeError(f"from_pretrained() got unexpected keyword argument(s) {', '.join(unknown)}.")
    config.update(kwargs)
    if state_dict is None:
        if located.directory is None:
            raise WeightsError("from_pretrained(None, ...) needs state_dict= with the weights.")
        weights = weights_file(located.directory)
        state_dict, where = read_state_dict(weights), str(weights)
    else:
        where = "state_dict"

    model = build_empty(cls, config)
    info = load_into(model, state_dict, ignore_mismatched_sizes=ignore_mismatched_sizes, source=where)
    _warn_fresh(cls.__name__, where, info)
    wanted = dtype if dtype is not None else torch_dtype
    if wanted is None or wanted == "auto":
        # transformers 5's default: the checkpoint's own dtype, from config.json or else its first float tensor.
        wanted = (config.extra.get("dtype") or config.extra.get("torch_dtype")
                  or next((t.dtype for t in state_dict.values() if t.is_floating_point()), None))
    target_device = device if device is not None else (device_map if isinstance(device_map, (str, torch.device))
                                                       and device_map != "auto" else None)
    if wanted is not None or target_device is not None:
        model = model.to(device=target_device, dtype=parse_dtype(wanted))
    model.eval()
    model.source = located.source
    return (model, info.to_dict()) if output_loading_info else model


def _config_for(located: Located, config: EfficientNetConfig | str | Path | None,
                config_class: type[EfficientNetConfig]) -> EfficientNetConfig:
    """The config to build: the one given (copied, or read from a path), else the checkpoint's config.json.

    ``config_class`` is the model class's (V1's or V2's); a config of the other family is refused.
    """
    if isinstance(config, (str, Path)):
        return config_class.from_pretrained(config, **located.download)
    if config is None:
        if located.directory is None:
            raise ConfigError("from_pretrained(None, ...) needs config= (and state_dict=) to build the model.")
        try:
            return config_class.from_json_file(located.directory / CONFIG_NAME)
        except ConfigError as exc:
            raise type(exc)(f"{located.directory / CONFIG_NAME}: {exc}") from None  # a missing file stays an OSError
    if not isinstance(config, config_class) or config.model_type != config_class.model_type:
        raise ConfigError(f"config must be an {config_class.__name__} or a path, got {type(config).__name__}.")
    return copy.deepcopy(config)  # the caller's object stays as it was


def _warn_fresh(name: str, where: str, info: LoadingInfo) -> None:
    """Warn, as transformers does, about tensors initialised afresh instead of loaded."""
    fresh = sorted(k for k in info.missing_keys if not k.endswith(".num_batches_tracked"))
    if fresh:
        warnings.warn(f"Some weights of {name} were not in {where} and were newly initialised: "
                      f"{', '.join(fresh)}. Train the model before using it.", stacklevel=5)
    if info.mismatched_keys:
        shown = ", ".join(f"{k} {tuple(old)} -> {tuple(new)}" for k, old, new in sorted(info.mismatched_keys))
        warnings.warn(f"Some weights of {name} had other shapes in {where} and were newly initialised: "
                      f"{shown}. Train the model before using it.", stacklevel=5)


def _is_config_key(config: EfficientNetConfig, key: str) -> bool:
    # transformers hands keyword arguments the config knows to the config. Unknown keys would go
    # to the model's constructor, which takes none, so they are an error there too.
    return key in {f.name for f in fields(config)} - {"extra"} or key in config.extra


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], *,
              ignore_mismatched_sizes: bool = False, source: str = "checkpoint") -> LoadingInfo:
    """Copy ``state_dict`` into ``model``; initialise (as the reference does) what it lacks.

    A base-model checkpoint fits a classifier and vice versa (the ``efficientnet.``
    prefix is added or dropped, as in transformers). A tensor whose shape differs
    is an error unless ``ignore_mismatched_sizes``, then it is initialised afresh.
    """
    expected = model.state_dict()
    state_dict = align_prefix(model, state_dict, drop_head=False)
    fit = fit_state(expected, state_dict)
    info = LoadingInfo(missing_keys=fit.missing, unexpected_keys=fit.unexpected, mismatched_keys=fit.mismatched)
    if info.mismatched_keys and not ignore_mismatched_sizes:
        shown = "; ".join(f"{k}: checkpoint {tuple(old)}, model {tuple(new)}"
                          for k, old, new in sorted(info.mismatched_keys))
        raise MismatchedSizesError(f"{source} does not fit this model's config ({shown}); pass ignore_mismatched_sizes=True "
                           "to initialise those tensors afresh, e.g. for a new num_labels.")
    mismatched = {k for k, _, _ in info.mismatched_keys}
    usable = {k: v for k, v in state_dict.items() if k in expected and k not in mismatched}
    model.load_state_dict(usable, strict=False)
    _initialise(model, info.missing_keys | mismatched)
    return info


def _initialise(model: nn.Module, keys: set[str]) -> None:
    """Run the reference's per-module init on every module that owns one of ``keys``, in module order."""
    # A checkpoint from an older torch lacks only the norms' step counters: those start at zero
    # without re-initialising the weights and statistics that were loaded.
    owners = {key.rpartition(".")[0] for key in keys if not key.endswith(".num_batches_tracked")}
    counters = {key.rpartition(".")[0] for key in keys if key.endswith(".num_batches_tracked")}
    with torch.no_grad():
        for name, module in model.named_modules():
            if name in owners:
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    # The reference's _init_weights first runs transformers' generic init (one normal
                    # draw per weight), then its own: draw both, so that a seeded head swap gives
                    # the reference's values, not only their distribution.
                    nn.init.normal_(module.weight, mean=0.0, std=model.config.initializer_range)
                model._init_weights(module)
            if name in counters or (name in owners and isinstance(module, nn.BatchNorm2d)):
                module.num_batches_tracked.zero_()
