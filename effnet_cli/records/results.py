"""What happened to each input: the records the writers consume, free of the inference stack.

Writers and renderers import these without importing torch, so a command that
only writes or reads outputs stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prediction:
    """One class of an image's top-k."""

    rank: int
    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON record form: rank, index, label, score."""
        return {"rank": self.rank, "index": self.index, "label": self.label, "score": self.score}


@dataclass
class Result:
    """What happened to one input: predictions (classify), a feature row (embed), or an error."""

    position: int  # index in the input list
    path: str
    predictions: list[Prediction] | None = None
    row: int | None = None  # embed: row of this input's features in the output array
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the input produced a result."""
        return self.error is None


@dataclass
class EmbedBatch:
    """Results of one batch of ``embed``: records in input order and the feature rows of the good ones."""

    results: list[Result]
    features: np.ndarray  # len(ok results) × D, float32 (or float16)
    stats: dict[str, float] = field(default_factory=dict)
