"""The conversion pipeline: read a checkpoint, pick its source, run the four steps, write the directory atomically.

:func:`convert_checkpoint` is the whole of ``effnet convert``; the per-source modules
(:mod:`.hf`, :mod:`.torchvision`, :mod:`.timm`, :mod:`.efficientnet_pytorch`,
:mod:`.keras`) decide each checkpoint's architecture, config, rename table and
preprocessing, and :mod:`.renames`, :mod:`.shapes` and :mod:`.verify` hold the steps.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from effnet_cli.convert.plan import Checkpoint, Plan
from effnet_cli.convert.renames import apply_renames
from effnet_cli.convert.shapes import check_against_model
from effnet_cli.convert.verify import VerifyResult, verify_conversion
from effnet_cli.core.checkpoint import build_empty, save_pretrained
from effnet_cli.core.config import EfficientNetConfig
from effnet_cli.errors import ConfigError, InputError, WeightsError
from effnet_cli.weights.files import PROCESSOR_NAME, SAFETENSORS_NAME, PICKLE_NAME
from effnet_cli.weights.presets import preset_json
from effnet_cli.weights.state_dict import read_state_dict

if TYPE_CHECKING:
    from effnet_cli.core.model import EfficientNetForImageClassification

# Detection order matters only in theory: the layouts share no stem key.
SOURCES = ("hf", "torchvision", "timm", "efficientnet_pytorch", "keras")
_ALIASES = {
    "transformers": "hf", "huggingface": "hf",
    "efficientnet-pytorch": "efficientnet_pytorch", "lukemelas": "efficientnet_pytorch",
    "efficientnet_lite_pytorch": "efficientnet_pytorch", "efficientnet-lite-pytorch": "efficientnet_pytorch",
    "tf.keras": "keras", "tensorflow": "keras",
}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".keras")


@dataclass
class ConversionReport:
    """What ``convert_checkpoint`` did: the source, the architecture, the config it wrote, and the check."""

    source: str
    arch: str
    config: EfficientNetConfig
    num_tensors: int  # tensors in the written model.safetensors
    source_tensors: int  # tensors read from the checkpoint
    src: Path
    out_dir: Path
    preprocessing: dict[str, Any]
    verify: VerifyResult | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output (the config as its config.json dict)."""
        return {
            "source": self.source,
            "arch": self.arch,
            "src": str(self.src),
            "out_dir": str(self.out_dir),
            "num_tensors": self.num_tensors,
            "source_tensors": self.source_tensors,
            "padding_mode": self.config.padding_mode,
            "batch_norm_eps": self.config.batch_norm_eps,
            "num_labels": self.config.num_labels,
            "preprocessing": self.preprocessing,
            "verify": self.verify.to_dict() if self.verify else None,
            "notes": list(self.notes),
        }


def source_module(source: str) -> ModuleType:
    """The converter module for a source name (``timm``, ``keras``, …; a few aliases accepted)."""
    name = _ALIASES.get(source.strip().lower(), source.strip().lower())
    if name not in SOURCES:
        raise ConfigError(f"Unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    return importlib.import_module(f"effnet_cli.convert.{name}")


def detect_source(state_dict: Mapping[str, Any]) -> str:
    """Which library wrote a state dict, from its key layout (Keras: the ``layer/variable`` names of :func:`read_checkpoint`)."""
    keys = set(state_dict)
    for name in SOURCES:
        if source_module(name).matches(keys):
            return name
    sample = ", ".join(sorted(keys)[:3]) or "none"
    raise WeightsError(
        f"Cannot tell which library wrote this checkpoint: its keys (e.g. {sample}) match none of "
        f"{', '.join(SOURCES)}; pass --from."
    )


def read_checkpoint(src: str | Path, source: str | None = None) -> tuple[Checkpoint, str]:
    """Read a checkpoint file or directory and name its source (given, from its config.json, or detected)."""
    path = Path(src).expanduser()
    if not path.exists():
        raise WeightsError(f"No checkpoint at {path}.")
    wanted = source_module(source).NAME if source else None
    timm_config: dict[str, Any] | None = None
    if path.is_dir():
        path, timm_config, hinted = _weights_in_directory(path)
        wanted = wanted or hinted
    if _is_keras_file(path):
        if wanted not in (None, "keras"):
            raise WeightsError(f"{path} is a Keras/HDF5 file, not a {wanted} checkpoint; use --from keras.")
        from effnet_cli.convert import keras

        return keras.read(path), "keras"
    if wanted == "hf":
        from effnet_cli.convert import hf

        return hf.read(path), "hf"
    tensors = read_state_dict(path)
    name = wanted or detect_source(tensors)
    if name == "hf":
        from effnet_cli.convert import hf

        return hf.read(path), "hf"
    meta = {"timm_config": timm_config} if timm_config else {}
    return Checkpoint(path, tensors, meta), name


def _weights_in_directory(directory: Path) -> tuple[Path, dict[str, Any] | None, str | None]:
    """The weights file inside a checkpoint directory, plus what its config.json says about the source."""
    import json

    config: dict[str, Any] = {}
    config_file = directory / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{config_file} is not readable JSON ({exc}).") from None
    hinted = "hf" if config.get("model_type") == "efficientnet" else "timm" if "architecture" in config else None
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        if (directory / name).is_file():
            return directory / name, (config if hinted == "timm" else None), hinted
    candidates = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "no weights file"
        raise WeightsError(f"{directory} should hold one weights file, found {found}; give the file itself.")
    return candidates[0], (config if hinted == "timm" else None), hinted


def _is_keras_file(path: Path) -> bool:
    if path.suffix in (".h5", ".keras") or path.name.endswith(".weights.h5"):
        return True
    with open(path, "rb") as fh:
        return fh.read(8) == _HDF5_MAGIC


def build_model(ckpt: Checkpoint, plan: Plan) -> EfficientNetForImageClassification:
    """Steps 1-3: rename and permute the tensors, check them against our model, load them."""
    from effnet_cli.core.model_v2 import model_class_for

    converted = apply_renames(ckpt.tensors, plan)
    model = build_empty(model_class_for(plan.config), plan.config)
    state = check_against_model(converted, model.state_dict(), plan)
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_checkpoint(src: str | Path, out_dir: str | Path, *, source: str | None = None, arch: str | None = None,
                       verify: bool = False, verify_size: int | None = None, overwrite: bool = False
                       ) -> ConversionReport:
    """Convert another library's EfficientNet checkpoint into a directory ``load_pretrained`` loads.

    ``source``: hf | torchvision | timm | efficientnet_pytorch | keras, detected
    from the key layout when None. ``arch``: the source's architecture name
    (``efficientnet_b3``, ``tf_efficientnet_b3``, ``efficientnet-b2``,
    ``EfficientNetB0``), inferred from tensor shapes when None and the shapes
    decide it. ``verify``: compare the source implementation's output with ours
    on a random input (at ``verify_size``, default the native size) and refuse
    to write anything if they differ by more than 1e-4 relative. ``out_dir``
    must be empty or absent unless ``overwrite``; it is written atomically.
    """
    src_path = Path(src).expanduser()
    out_path = Path(out_dir).expanduser()
    _check_destination(out_path, overwrite)
    ckpt, name = read_checkpoint(src_path, source)
    module = source_module(name)
    if not module.matches(set(ckpt.tensors)):
        try:
            looks = f" (it looks like {detect_source(ckpt.tensors)}'s)"
        except WeightsError:
            looks = ""
        raise WeightsError(f"{ckpt.path} does not have {name}'s EfficientNet key layout{looks}; check --from.")
    plan = module.plan(ckpt, arch)
    model = build_model(ckpt, plan)
    result = verify_conversion(module, ckpt, plan, model, size=verify_size) if verify else None
    if result is not None and result.passed is False:
        raise WeightsError(
            f"Verification failed: the converted model differs from {result.reference} by up to "
            f"{result.max_abs_diff:.3g} ({result.max_rel_diff:.3g} relative, tolerance {result.tolerance:g}); "
            "nothing was written."
        )
    _write_atomically(out_path, model, plan.preprocessing, overwrite=overwrite)
    return ConversionReport(
        source=name,
        arch=plan.arch,
        config=plan.config,
        num_tensors=len(model.state_dict()),
        source_tensors=len(ckpt.tensors),
        src=ckpt.path,
        out_dir=out_path,
        preprocessing=plan.preprocessing,
        verify=result,
        notes=list(plan.notes),
    )


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse a destination convert must not write: a file, a non-empty directory, or (even with
    ``overwrite``) a directory holding anything but effnet's own model files."""
    from effnet_cli.output import MODEL_DIR_FILES, foreign_files
    from effnet_cli.records.pathtext import display_path

    if out_dir.exists() and not out_dir.is_dir():
        raise WeightsError(f"{display_path(out_dir)} exists and is not a directory.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise WeightsError(f"{display_path(out_dir)} is not empty; choose a new output directory, or pass "
                               f"overwrite=True to replace it.")
        foreign = foreign_files(out_dir)
        if foreign:
            shown = ", ".join(display_path(name) for name in foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise InputError(f"{display_path(out_dir)} holds files convert did not write ({shown}); "
                               f"--overwrite only replaces {', '.join(MODEL_DIR_FILES)}: move them away or "
                               f"choose another directory.")


def _write_atomically(out_dir: Path, model: EfficientNetForImageClassification, preprocessing: dict[str, Any], *, overwrite: bool) -> None:
    """Write into a hidden sibling directory, then rename it into place.

    A crash or a kill leaves at most a hidden ``.NAME.*.tmp`` directory, never a
    half-written ``out_dir``; two processes writing the same directory end with
    one complete copy.
    """
    from effnet_cli.output import temp_dir, write_text

    tmp = temp_dir(out_dir)
    try:
        save_pretrained(model, tmp)
        write_text(tmp / PROCESSOR_NAME, preset_json(preprocessing))
        if not publish_directory(tmp, out_dir, replace=overwrite):
            raise WeightsError(f"{out_dir} was filled by another process during the conversion, or holds files "
                               f"convert did not write; it was left as it is.")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory, nothing else


def publish_directory(tmp: Path, final: Path, *, replace: bool) -> bool:
    """Rename a finished ``tmp`` directory to ``final``; True if ours won.

    An existing empty ``final`` is replaced; an existing non-empty one only with
    ``replace`` and only when it holds nothing but effnet's own model files
    (moved aside first, so readers never see a mix). Otherwise ``tmp`` is left
    for the caller to remove and False is returned.
    """
    from effnet_cli.output import MODEL_DIR_FILES, publish_dir

    return publish_dir(tmp, final, replace_own=MODEL_DIR_FILES if replace else None)
