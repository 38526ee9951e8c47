"""effnet: EfficientNet classification and embeddings, exact to the Hugging Face reference.

The public names are imported lazily so that ``effnet --help`` and
``import effnet_cli`` stay fast: torch is only imported when a model,
processor or loader is first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from effnet_cli.host import EFFNET_VERSION as __version__

# public name -> module that defines it
_LAZY = {
    "EfficientNetConfig": "effnet_cli.core.config",
    "EfficientNetModel": "effnet_cli.core.model",
    "EfficientNetForImageClassification": "effnet_cli.core.model",
    "EfficientNetPreTrainedModel": "effnet_cli.core.model",
    "EfficientNetImageProcessor": "effnet_cli.core.processor",
    "EfficientNetV2Config": "effnet_cli.core.config_v2",
    "EfficientNetV2Model": "effnet_cli.core.model_v2",
    "EfficientNetV2ForImageClassification": "effnet_cli.core.model_v2",
    "load_pretrained": "effnet_cli.runtime.pretrained",
    "optimize": "effnet_cli.runtime.fused",
    "finetune": "effnet_cli.training",
    "read_embeddings": "effnet_cli.scale.shards",
    "read_predictions": "effnet_cli.scale.shards",
    "Index": "effnet_cli.similar",
    "EffnetError": "effnet_cli.errors",
    "ConfigError": "effnet_cli.errors",
    "ConfigFileError": "effnet_cli.errors",
    "WeightsError": "effnet_cli.errors",
    "LoadError": "effnet_cli.errors",
    "UnsafeCheckpointError": "effnet_cli.errors",
    "OfflineError": "effnet_cli.errors",
    "InputError": "effnet_cli.errors",
    "DecodeError": "effnet_cli.errors",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from effnet_cli.core.config import EfficientNetConfig
    from effnet_cli.core.config_v2 import EfficientNetV2Config
    from effnet_cli.core.model_v2 import EfficientNetV2ForImageClassification, EfficientNetV2Model
    from effnet_cli.errors import (
        ConfigError,
        ConfigFileError,
        DecodeError,
        EffnetError,
        InputError,
        LoadError,
        OfflineError,
        UnsafeCheckpointError,
        WeightsError,
    )
    from effnet_cli.runtime.pretrained import load_pretrained
    from effnet_cli.core.model import EfficientNetForImageClassification, EfficientNetModel, EfficientNetPreTrainedModel
    from effnet_cli.runtime.fused import optimize
    from effnet_cli.scale.shards import read_embeddings, read_predictions
    from effnet_cli.similar import Index
    from effnet_cli.training import finetune
    from effnet_cli.core.processor import EfficientNetImageProcessor


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'effnet_cli' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
