"""State dicts on disk: read without running code, write atomically, and check against expected shapes.

:func:`read_state_dict` reads ``.safetensors`` directly and anything else as a torch
pickle through ``torch.load(weights_only=True)``; a pickle that would need more is
refused with :class:`UnsafeCheckpointError`, naming what it would have run.
:func:`fit_state` is the one name-and-shape comparison every loader and converter
makes before copying a tensor; :func:`describe_problems` words its result.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet_cli.errors import LoadError, UnsafeCheckpointError, one_line

if TYPE_CHECKING:
    import torch

# Wrappers training scripts put around the weights (timm, Lightning-style, EMA checkpoints).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors without running any code from the file.

    ``.safetensors`` files are read directly. Anything else is treated as a
    torch pickle and read with ``torch.load(weights_only=True)``, which refuses
    any object other than tensors and plain containers; a file that would need
    more is rejected with :class:`UnsafeCheckpointError` before anything runs.
    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``)
    are unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise LoadError(f"No weights file at {path}.")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise LoadError(f"{path} is not a readable safetensors file (truncated or corrupt: {exc}).") from None
    if path.suffix in (".h5", ".keras"):
        raise LoadError(f"{path} is a Keras file; convert it first with `effnet convert {path} --from keras -o DIR`.")
    if not head.startswith(b"PK\x03\x04") and head[:1] != b"\x80":
        # torch.save writes a zip archive (or, before torch 1.6, a pickle of protocol 2 and up).
        raise LoadError(f"{path} is not a PyTorch checkpoint: it is neither a zip archive nor a pickle "
                           f"(it starts with {head!r}).")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not read; the outcome below says all a user needs.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files; each becomes one sentence
        calls = _pickle_calls(path)
        if calls:
            raise UnsafeCheckpointError(
                f"{path} is a pickle that would run {', '.join(calls[:3])} when loaded, so it was refused; "
                f"ask for a safetensors file instead."
            ) from None
        raise LoadError(f"{path} is not a readable torch checkpoint ({type(exc).__name__}: "
                           f"{one_line(exc, upto='sentence')}).") from None
    return _unwrap_state_dict(data, path)


def _pickle_calls(path: Path) -> list[str]:
    """The callables outside torch and collections that the checkpoint's pickle names, read without running it."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    calls: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                calls.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                calls.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was read up to the damage
        pass
    harmless = ("torch.", "collections.OrderedDict", "_codecs.encode")
    return list(dict.fromkeys(c for c in calls if not c.startswith(harmless)))


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    # safetensors starts with a little-endian u64 header length, then '{'.
    if len(head) < 8 or path.suffix in (".bin", ".pth", ".pt", ".ckpt"):
        return False
    size = int.from_bytes(head, "little")
    return 0 < size < path.stat().st_size


def _unwrap_state_dict(data: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    for key in _WRAPPER_KEYS:
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise LoadError(f"{path} holds no state dict of tensors.")
    out = {}
    for key, value in data.items():
        if not isinstance(value, torch.Tensor):
            raise LoadError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        out[str(key).removeprefix("module.")] = value
    return out


def save_state_dict(tensors: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write ``tensors`` as one safetensors file, atomically and with the umask's mode."""
    from safetensors.torch import save

    from effnet_cli.output import write_bytes

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # Through the output layer (atomic, umask modes), not safetensors' own file writer.
    write_bytes(path, save(contiguous, metadata={"format": "pt"}))


# ------------------------------------------------------------------ fit check
@dataclass
class StateFit:
    """How a state dict fits the expected names and shapes."""

    missing: set[str] = field(default_factory=set)  # expected, not in the state dict
    unexpected: set[str] = field(default_factory=set)  # in the state dict, not expected
    mismatched: set[tuple[str, Any, Any]] = field(default_factory=set)  # (key, its shape, the expected shape)

    @property
    def exact(self) -> bool:
        """Every expected tensor present with its shape, nothing else."""
        return not (self.missing or self.unexpected or self.mismatched)


def fit_state(expected: Mapping[str, Any], state: Mapping[str, Any]) -> StateFit:
    """Compare ``state``'s tensors with ``expected``'s (anything with ``.shape``) by name and shape."""
    mismatched = {(key, state[key].shape, expected[key].shape) for key in set(expected) & set(state)
                  if tuple(state[key].shape) != tuple(expected[key].shape)}
    return StateFit(set(expected) - set(state), set(state) - set(expected), mismatched)


def describe_problems(groups: Sequence[tuple[str, Sequence[str]]], *, limit: int) -> str:
    """``"2 missing tensor(s): a, b; 1 mis-shaped tensor(s): c"``, the first ``limit`` names of each group."""
    problems = []
    for what, names in groups:
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
            problems.append(f"{len(names)} {what} tensor(s): {shown}")
    return "; ".join(problems)


def align_prefix(expected: Mapping[str, Any], state_dict: dict[str, torch.Tensor], prefix: str, *,
                 drop_head: bool) -> dict[str, torch.Tensor]:
    """``state_dict`` with ``prefix`` added or removed to fit the ``expected`` keys, as transformers does.

    A base-model checkpoint fits a classifier (prefix added); a classifier's fits a base model
    (prefix removed). ``drop_head`` then drops the classifier's own tensors instead of keeping
    them under their names (where a loader reports them as unexpected).
    """
    wants_prefix = any(k.startswith(prefix) for k in expected)
    has_prefix = any(k.startswith(prefix) for k in state_dict)
    if wants_prefix and not has_prefix:
        return {prefix + k: v for k, v in state_dict.items()}
    if has_prefix and not wants_prefix:
        return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix) or not drop_head}
    return state_dict
