"""torch dtypes by the names users and config.json give them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from effnet_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch


def dtype_name(dtype: Any) -> Any:
    """``torch.float16`` -> ``"float16"``: JSON-writable, as transformers stores a dtype in config.json."""
    return dtype if dtype is None or isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` -> ``torch.bfloat16``; a torch dtype or None passes through.

    Raises:
        ConfigError: a name that is not one of float32, float16, bfloat16 (or their short forms).
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ConfigError(f"dtype must be one of float32, float16, bfloat16; got {dtype!r}.")
    return names[dtype]
