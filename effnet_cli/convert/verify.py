"""Step 4 of a conversion: the source implementation's output and ours on the same random input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from effnet_cli.convert.plan import Checkpoint, Plan
from effnet_cli.errors import WeightsError, one_line

if TYPE_CHECKING:
    from effnet_cli.core.model import EfficientNetForImageClassification

VERIFY_TOLERANCE = 1e-4  # relative: max |ours - theirs| / max |theirs|


class ReferenceUnavailable(Exception):
    """The source implementation cannot run this checkpoint here (package missing, unsupported options)."""


@dataclass
class VerifyResult:
    """The output check: source implementation vs converted model on the same random input."""

    reference: str  # what produced the expected output, e.g. "timm 1.0.31 tf_efficientnet_b3"
    input_shape: tuple[int, ...] | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None  # max |ours - theirs| / max |theirs|
    tolerance: float = 1e-4
    compared: str = "logits"  # or "pooled features" for headless checkpoints
    skipped: str | None = None  # why the check could not run (the source package is not installed)

    @property
    def passed(self) -> bool | None:
        """True/False once compared; None when skipped."""
        if self.skipped is not None or self.max_rel_diff is None:
            return None
        return self.max_rel_diff <= self.tolerance

    def __str__(self) -> str:
        """One line for people: what was compared, the differences, the verdict."""
        if self.skipped is not None:
            return f"not verified: {self.skipped}"
        shape = "×".join(str(d) for d in self.input_shape or ())
        verdict = "passed" if self.passed else "FAILED"
        return (f"{verdict}: {self.compared} differ from {self.reference} by at most {self.max_abs_diff:.3g} "
                f"({self.max_rel_diff:.3g} relative, tolerance {self.tolerance:g}) on a random {shape} input")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "reference": self.reference,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "compared": self.compared,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "skipped": self.skipped,
        }


def compare_outputs(ours: torch.Tensor, theirs: torch.Tensor, result: VerifyResult) -> VerifyResult:
    """Fill ``result`` with the largest absolute and relative difference of two outputs."""
    ours = ours.detach().double().cpu()
    theirs = theirs.detach().double().cpu()
    if ours.shape != theirs.shape:
        raise WeightsError(f"Verification failed: our output is {tuple(ours.shape)}, {result.reference}'s is {tuple(theirs.shape)}.")
    diff = (ours - theirs).abs().max().item()
    scale = max(theirs.abs().max().item(), 1e-12)
    result.max_abs_diff = diff
    result.max_rel_diff = diff / scale
    result.input_shape = result.input_shape or tuple(ours.shape)
    return result


def pixel_values_from_raw(raw: torch.Tensor, preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """The numeric part of a preprocessor config (rescale, normalise) applied to raw 0-255 pixels.

    Used by verification so that sources whose models take raw pixels (Keras) are
    compared through the preprocessing we wrote, not around it.
    """
    x = raw.double()
    if preprocessing.get("do_rescale", True):
        x = x * float(preprocessing.get("rescale_factor", 1 / 255))
        if preprocessing.get("rescale_offset", False):
            x = x - 1.0
    if preprocessing.get("do_normalize", True):
        mean = torch.tensor(preprocessing["image_mean"], dtype=torch.float64).view(1, -1, 1, 1)
        std = torch.tensor(preprocessing["image_std"], dtype=torch.float64).view(1, -1, 1, 1)
        x = (x - mean) / std
        if preprocessing.get("include_top", False):
            x = x / std  # transformers' quirk: a second division by the std
    return x.float()


def verify_conversion(module: ModuleType, ckpt: Checkpoint, plan: Plan, model: EfficientNetForImageClassification, *,
                      size: int | None = None, tolerance: float = VERIFY_TOLERANCE) -> VerifyResult:
    """Step 4: the source implementation and our model on the same random input.

    The input is random raw pixels (0-255); our model gets them through the
    preprocessing we write, so sources that normalise inside the model (Keras)
    check that too. Skipped, with the reason, when the source package is missing.
    """
    size = size or plan.config.image_size
    raw = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    pixel_values = pixel_values_from_raw(raw, plan.preprocessing)
    compared = "logits" if plan.config.num_labels else "pooled features"
    try:
        theirs, reference = module.reference_output(ckpt, plan, raw, pixel_values)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module.PACKAGE
        return VerifyResult(reference=module.PACKAGE, tolerance=tolerance, compared=compared,
                            skipped=f"{missing} is not installed, so the {module.NAME} model could not run")
    except ReferenceUnavailable as exc:
        return VerifyResult(reference=module.PACKAGE, tolerance=tolerance, compared=compared, skipped=str(exc))
    except (RuntimeError, ValueError, KeyError) as exc:  # the source library refused the checkpoint
        first = one_line(exc, upto="line", limit=200)
        raise WeightsError(f"Verification could not run {module.NAME}'s own model on this checkpoint: {first}.") from None
    with torch.no_grad():
        if plan.config.num_labels:
            ours = model(pixel_values).logits
        else:
            ours = model.efficientnet(pixel_values).pooler_output
    result = VerifyResult(reference=reference, input_shape=tuple(raw.shape), tolerance=tolerance, compared=compared)
    return compare_outputs(ours, theirs, result)
