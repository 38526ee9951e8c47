"""Model outputs as the reference returns them: ordered mappings readable by name, key or position."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class ModelOutput(OrderedDict):
    """Model outputs as the reference returns them: an ordered mapping of the fields that are set.

    A field is readable as an attribute (``out.logits``), by key (``out["logits"]``)
    or by position over the non-None fields (``out[0]``, ``out[1:]``), so code
    written for either ``return_dict`` setting works. Iterating yields the keys;
    ``None`` fields are absent from the mapping (``"loss" in out`` is False when
    no labels were given) but still readable as attributes.
    """

    def __post_init__(self) -> None:
        # Subclasses are dataclasses: the generated __init__ set the attributes, fill the mapping from them.
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields in order, as ``return_dict=False`` gives them."""
        return tuple(self.values())

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        # Keep attribute and mapping views in step, as the reference does.
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"{type(self).__name__} fields cannot be deleted; set them to None instead.")

    def setdefault(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} has a fixed set of fields.")

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{type(self).__name__} fields cannot be removed.")

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} has a fixed set of fields; assign them one by one.")

    def __reduce__(self) -> Any:
        # Pickle (DataLoader workers, torch.save) as the dataclass it is, not as a plain OrderedDict.
        return type(self), tuple(getattr(self, f.name) for f in fields(self))


@dataclass
class EfficientNetModelOutput(ModelOutput):
    """Base-model outputs: the head's feature map, its pooled vector and (optionally) every block's output."""

    last_hidden_state: torch.Tensor | None = None  # N×hidden_dim×h×w
    pooler_output: torch.Tensor | None = None  # N×hidden_dim
    hidden_states: tuple[torch.Tensor, ...] | None = None  # stem, then one per block


@dataclass
class ImageClassifierOutput(ModelOutput):
    """Classifier outputs: loss (when labels were given), logits, hidden states."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
