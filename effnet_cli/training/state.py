"""The training loop's state, and the checkpoint that saves and restores it.

A checkpoint (model, optimizer, scheduler, RNG state, position in the
epoch's seeded order) is written atomically after every epoch and on Ctrl-C;
a resumed run checks that its settings and data are those of the checkpoint.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from effnet_cli.errors import InputError
from effnet_cli.training.dataset import Samples, Split
from effnet_cli.training.files import OutputDir
from effnet_cli.training.options import RESUME_KEYS, FinetuneOptions

CHECKPOINT = "checkpoint.pt"
FEATURES = "features.pt"  # the linear probe's inputs, computed once and kept until the run completes
_CHECKPOINT_VERSION = 1


@dataclass
class Running:
    """The current epoch's totals so far (saved in the checkpoint, so a resumed epoch reports the same)."""

    loss: float = 0.0  # summed over the images seen
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0  # spent in training steps


@dataclass
class TrainState:
    """Everything the loop, the evaluation and the checkpoint share during one run."""

    opts: FinetuneOptions
    split: Split
    settings: dict[str, Any]  # what a resume must match (see resume_settings)
    features: dict[str, torch.Tensor] | None  # the linear probe's inputs; None when the network trains
    model: nn.Module
    optimizer: Any
    scheduler: Any
    out: OutputDir | None
    processor: Any
    device: torch.device
    amp: Any  # bfloat16 autocast, or a null context
    workers: int  # decode processes
    frozen: Any  # the modules kept as loaded (see recipe.frozen_modules)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch

    @property
    def probe(self) -> bool:
        """True when only the classifier trains, on features computed once."""
        return self.features is not None

    @property
    def trained(self) -> nn.Module:
        """The part of the model that trains and is checkpointed (the probe: the classifier only)."""
        # The probe trains the classifier only: the backbone is the loaded one, not worth saving each epoch.
        return self.model.classifier if self.probe else self.model


def resume_settings(opts: FinetuneOptions, data_print: str) -> dict[str, Any]:
    values = asdict(opts)
    settings = {k: values[k] for k in RESUME_KEYS}
    settings["freeze"] = str(settings["freeze"])
    settings["data"] = data_print
    return settings


def check_settings(saved: dict[str, Any], current: dict[str, Any]) -> None:
    for key in sorted(set(saved) | set(current)):
        if key == "data" and key in current:
            if saved.get(key) != current[key]:
                raise InputError("The images or labels differ from those of the interrupted run; resume with the "
                                 "same data or start a new output directory.")
            continue
        if key == "data":
            continue  # the first check, before the data is read again
        if saved.get(key) != current.get(key):
            name = "--" + key.replace("_", "-")
            raise InputError(f"The checkpoint was made with {name} {saved.get(key)!r}, this run asks for "
                             f"{current.get(key)!r}; resume with the same settings or start a new output directory.")


def save_checkpoint(state: TrainState, epoch: int, step: int, running: Running) -> None:
    """Write the checkpoint: where the run is, the weights it trains, the optimizer, schedule and RNG state."""
    split = state.split
    payload = {
        "version": _CHECKPOINT_VERSION,
        "settings": state.settings,
        "epoch": epoch,
        "step": step,
        "running": asdict(running),
        "model": state.trained.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "history": state.history,
        "split": {"classes": split.classes, "errors": split.errors,
                  "train": [split.train.paths, split.train.labels, split.train.source],
                  "val": None if split.val is None else [split.val.paths, split.val.labels, split.val.source]},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    state.out.write(CHECKPOINT, buf.getvalue())


def load_checkpoint(out: OutputDir | None, opts: FinetuneOptions) -> dict[str, Any] | None:
    if out is None:
        raise InputError("--resume needs an output directory to resume from.")
    path = out.path / CHECKPOINT
    if not path.is_file():
        if (out.path / "model.safetensors").is_file():
            raise InputError(f"{out.path} holds a finished run; nothing to resume.")
        raise InputError(f"{out.path} has no checkpoint to resume from; run without --resume.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged file is the user's to remove, whatever the reason
        raise InputError(f"{path} is not a readable checkpoint; remove it to start over.") from None
    if checkpoint.get("version") != _CHECKPOINT_VERSION:
        raise InputError(f"{path} was written by another version of effnet; start a new output directory.")
    check_settings(checkpoint["settings"], {k: str(v) if k == "freeze" else v
                                             for k, v in asdict(opts).items() if k in RESUME_KEYS})
    return checkpoint


def load_features(out: OutputDir) -> dict[str, torch.Tensor]:
    try:
        return torch.load(out.path / FEATURES, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        raise InputError(f"{out.path / FEATURES} is missing or damaged; start a new output directory.") from None


def split_from(checkpoint: dict[str, Any]) -> Split:
    s = checkpoint["split"]
    train = Samples(*s["train"])
    val = Samples(*s["val"]) if s["val"] is not None else None
    return Split(train=train, val=val, classes=list(s["classes"]), errors=list(s["errors"]))

