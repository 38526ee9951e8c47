"""What a source module reads and decides: the :class:`Checkpoint`, its rename :class:`Rename` rows, the :class:`Plan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet_cli.core.config import EfficientNetConfig

if TYPE_CHECKING:
    import torch


@dataclass
class Checkpoint:
    """What a source module read from disk: the tensors plus anything else the file told us."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. a timm or HF config.json, Keras layer names


@dataclass(frozen=True)
class Rename:
    """One row of a rename table: our key <- the source's key, with an optional named permute."""

    target: str
    source: str
    permute: str | None = None  # a key of PERMUTES
    optional: bool = False  # BN's num_batches_tracked: absent in some sources, zero then


@dataclass
class Plan:
    """Everything a source module decided about one checkpoint before any tensor is copied."""

    source: str
    arch: str
    config: EfficientNetConfig
    table: list[Rename]
    preprocessing: dict[str, Any]  # the preprocessor_config.json to write
    consumed: frozenset[str] = frozenset()  # source keys used outside the model (Keras's Normalization)
    notes: list[str] = field(default_factory=list)
