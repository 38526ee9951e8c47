"""The four visible steps every converter takes, shared by the per-source modules.

1. **Rename** — an explicit table (:class:`Rename` rows) maps each of our state-dict
   keys to the source's key. Tables are built from per-block templates: each
   source module says which of *its* module names plays which *part* of an MBConv
   block (``dw_conv``, ``se_reduce``, ``project_bn``, …), and :func:`build_table`
   expands that for every block of the config.
2. **Permute** — layout changes are named (:data:`PERMUTES`) and written into the
   table row that needs them, so a reader sees exactly which tensors are
   transposed and how (Keras HWIO kernels, depthwise kernels, dense kernels).
3. **Shape check** — :func:`check_against_model` compares every converted tensor
   with our model's state dict and raises one :class:`WeightsError` naming each
   missing, unexpected or mis-shaped tensor; nothing is ever loaded partially.
4. **Output check** — :func:`compare_outputs` runs on the source implementation's
   output and ours, and :class:`VerifyResult` carries the largest differences.

Also here: the :class:`Checkpoint` a source module reads, the :class:`Plan` it
makes (architecture, config, table, preprocessing), variant inference from
tensor shapes, and the ``preprocessor_config.json`` builder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from effnet_cli.core.config import VARIANTS, BlockSpec, EfficientNetConfig
from effnet_cli.errors import ConfigError, WeightsError

# ------------------------------------------------------------------ checkpoints


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


# ---------------------------------------------------------------- step 2: permutes
# Named layout changes, applied where a rename row asks for one. torch stores conv
# kernels OIHW and linear weights (out, in); Keras stores HWIO, depthwise kernels as
# (H, W, C, depth_multiplier) and dense kernels as (in, out).
PERMUTES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "conv_hwio_to_oihw": lambda t: t.permute(3, 2, 0, 1),
    "depthwise_hwcm_to_cmhw": lambda t: t.permute(2, 3, 0, 1),  # (H, W, C, 1) -> (C, 1, H, W)
    "dense_io_to_oi": lambda t: t.t(),
}

# --------------------------------------------------------------- step 1: renames
# Our key for each part of the network (module names of effnet_cli.core.model, i.e. the
# transformers reference's keys). "{i}" is the block's index in encoder.blocks.
OUR_PARTS: dict[str, str] = {
    "stem_conv": "efficientnet.embeddings.convolution",
    "stem_bn": "efficientnet.embeddings.batchnorm",
    "expand_conv": "efficientnet.encoder.blocks.{i}.expansion.expand_conv",
    "expand_bn": "efficientnet.encoder.blocks.{i}.expansion.expand_bn",
    "dw_conv": "efficientnet.encoder.blocks.{i}.depthwise_conv.depthwise_conv",
    "dw_bn": "efficientnet.encoder.blocks.{i}.depthwise_conv.depthwise_norm",
    "se_reduce": "efficientnet.encoder.blocks.{i}.squeeze_excite.reduce",
    "se_expand": "efficientnet.encoder.blocks.{i}.squeeze_excite.expand",
    "project_conv": "efficientnet.encoder.blocks.{i}.projection.project_conv",
    "project_bn": "efficientnet.encoder.blocks.{i}.projection.project_bn",
    "head_conv": "efficientnet.encoder.top_conv",
    "head_bn": "efficientnet.encoder.top_bn",
    "classifier": "classifier",
}
# What kind of layer each part is: decides which parameters it has.
PART_KINDS: dict[str, str] = {
    "stem_conv": "conv", "expand_conv": "conv", "project_conv": "conv", "head_conv": "conv",
    "dw_conv": "depthwise",
    "se_reduce": "conv_bias", "se_expand": "conv_bias",
    "stem_bn": "bn", "expand_bn": "bn", "dw_bn": "bn", "project_bn": "bn", "head_bn": "bn",
    "classifier": "linear",
}


@dataclass(frozen=True)
class ParamStyle:
    """How a source names the parameters inside one layer, and which permutes they need."""

    sep: str  # between module path and parameter name: "." for torch, "/" for Keras
    params: Mapping[str, tuple[tuple[str, str, str | None, bool], ...]]  # kind -> (ours, theirs, permute, optional)


TORCH_STYLE = ParamStyle(
    sep=".",
    params={
        "conv": (("weight", "weight", None, False),),
        "depthwise": (("weight", "weight", None, False),),
        "conv_bias": (("weight", "weight", None, False), ("bias", "bias", None, False)),
        "bn": (
            ("weight", "weight", None, False),
            ("bias", "bias", None, False),
            ("running_mean", "running_mean", None, False),
            ("running_var", "running_var", None, False),
            ("num_batches_tracked", "num_batches_tracked", None, True),
        ),
        "linear": (("weight", "weight", None, False), ("bias", "bias", None, False)),
    },
)

KERAS_STYLE = ParamStyle(
    sep="/",
    params={
        "conv": (("weight", "kernel", "conv_hwio_to_oihw", False),),
        "depthwise": (("weight", "kernel", "depthwise_hwcm_to_cmhw", False),),
        "conv_bias": (("weight", "kernel", "conv_hwio_to_oihw", False), ("bias", "bias", None, False)),
        "bn": (
            ("weight", "gamma", None, False),
            ("bias", "beta", None, False),
            ("running_mean", "moving_mean", None, False),
            ("running_var", "moving_variance", None, False),
        ),
        "linear": (("weight", "kernel", "dense_io_to_oi", False), ("bias", "bias", None, False)),
    },
)


def build_table(
    config: EfficientNetConfig,
    *,
    stem_head: Mapping[str, str],
    block_parts: Callable[[BlockSpec, int], Mapping[str, str]],
    style: ParamStyle = TORCH_STYLE,
) -> list[Rename]:
    """Expand a source's templates into the full rename table for ``config``.

    ``stem_head`` maps the parts ``stem_conv, stem_bn, head_conv, head_bn,
    classifier`` to the source's module paths; ``block_parts(block, j)`` does the
    same for the parts of one block (``j`` is its position inside its stage).
    Parts our config does not build (expansion when the ratio is 1, squeeze-excite
    for Lite, the classifier of a headless checkpoint) are left out.
    """
    rows: list[Rename] = []

    def add(part: str, source_module: str, index: int | None = None) -> None:
        ours = OUR_PARTS[part].format(i=index)
        for our_param, their_param, permute, optional in style.params[PART_KINDS[part]]:
            rows.append(Rename(f"{ours}.{our_param}", f"{source_module}{style.sep}{their_param}", permute, optional))

    add("stem_conv", stem_head["stem_conv"])
    add("stem_bn", stem_head["stem_bn"])
    stage_start: dict[int, int] = {}
    for block in config.blocks():
        j = block.index - stage_start.setdefault(block.stage, block.index)
        parts = block_parts(block, j)
        wanted = ["dw_conv", "dw_bn", "project_conv", "project_bn"]
        if block.expand_ratio != 1:
            wanted[:0] = ["expand_conv", "expand_bn"]
        if config.use_squeeze_excite:
            wanted += ["se_reduce", "se_expand"]
        for part in wanted:
            add(part, parts[part], block.index)
    add("head_conv", stem_head["head_conv"])
    add("head_bn", stem_head["head_bn"])
    if config.num_labels:
        add("classifier", stem_head["classifier"])
    return rows


@dataclass
class Renamed:
    """Steps 1-2's result: our tensors, plus what did not map (reported with the shape check)."""

    tensors: dict[str, torch.Tensor]
    missing: list[str]  # source keys the table needs but the checkpoint lacks
    unexpected: list[str]  # checkpoint keys the table does not use


def apply_renames(tensors: Mapping[str, torch.Tensor], plan: Plan) -> Renamed:
    """Steps 1 and 2: our state dict from the source's, every row's permute applied.

    Source tensors the table needs but the checkpoint lacks, and checkpoint
    tensors the table does not use, are collected for :func:`check_against_model`
    to report together with any shape mismatch.
    """
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    used: set[str] = set(plan.consumed)
    for row in plan.table:
        tensor = tensors.get(row.source)
        if tensor is None:
            if not row.optional:
                missing.append(row.source)
            continue
        used.add(row.source)
        if row.permute is not None:
            tensor = PERMUTES[row.permute](tensor)
        out[row.target] = tensor.contiguous()
    return Renamed(out, missing, sorted(set(tensors) - used))


# ------------------------------------------------------------ step 3: shape check
def check_against_model(renamed: Renamed, expected: Mapping[str, torch.Tensor], plan: Plan) -> dict[str, torch.Tensor]:
    """Compare every converted tensor with our model's state dict, by name and shape.

    Fills BN ``num_batches_tracked`` counters the source does not store (they do
    not affect inference). Raises one :class:`WeightsError` that names each
    missing, unexpected and mis-shaped tensor by its key in the source checkpoint.
    """
    source_of = {row.target: row.source for row in plan.table}
    converted = dict(renamed.tensors)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = torch.zeros_like(value, device="cpu")
    # Our keys without a table row are converter bugs, but name them all the same.
    missing = renamed.missing + sorted(k for k in set(expected) - set(converted) if k not in source_of)
    unexpected = renamed.unexpected + sorted(source_of[k] for k in set(converted) - set(expected))
    wrong = []
    for key in sorted(set(expected) & set(converted)):
        want, got = tuple(expected[key].shape), tuple(converted[key].shape)
        if want != got:
            wrong.append(f"{source_of.get(key, key)} {got} (needs {want})")
    _raise_problems(plan, [("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)])
    return converted


def _raise_problems(plan: Plan, groups: list[tuple[str, list[str]]], limit: int = 8) -> None:
    problems = []
    for what, names in groups:
        if names:
            shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
            problems.append(f"{len(names)} {what} tensor(s): {shown}")
    if problems:
        raise WeightsError(f"The {plan.source} checkpoint does not fit {plan.arch}: " + "; ".join(problems) + ".")


def layout_problems(tensors: Mapping[str, torch.Tensor], plan: Plan, expected: Mapping[str, torch.Tensor]) -> int:
    """How badly ``tensors`` fit ``plan`` (0 = perfectly): used to pick a variant from shapes."""
    count = 0
    used = set(plan.consumed)
    for row in plan.table:
        tensor = tensors.get(row.source)
        if tensor is None:
            count += 0 if row.optional else 1
            continue
        used.add(row.source)
        shape = tuple(PERMUTES[row.permute](tensor).shape) if row.permute else tuple(tensor.shape)
        want = expected.get(row.target)
        if want is None or tuple(want.shape) != shape:
            count += 1
    return count + len(set(tensors) - used)


# ----------------------------------------------------------- step 4: output check
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


# ------------------------------------------------------------- configs & variants
def variant_config(variant: str, *, num_labels: int, image_size: int | None = None,
                   **overrides: Any) -> EfficientNetConfig:
    """Our config for a published variant, with the checkpoint's head size.

    ImageNet-1k names for 1000-way heads; ``LABEL_i`` otherwise; no head at all
    for ``num_labels=0``.
    """
    if num_labels != 1000:
        overrides.update(id2label=None, label2id=None, num_labels=num_labels)
    if image_size is not None:
        overrides["image_size"] = image_size
    return EfficientNetConfig.from_variant(variant, **overrides)


def count_classes(tensors: Mapping[str, torch.Tensor], bias_key: str) -> int:
    """Classifier outputs, from the classifier bias (0 for a headless checkpoint)."""
    bias = tensors.get(bias_key)
    return int(bias.shape[0]) if bias is not None else 0


def expected_state(config: EfficientNetConfig) -> dict[str, torch.Tensor]:
    """Our model's state dict for ``config`` on the meta device: names and shapes, no memory."""
    from effnet_cli.core.model import EfficientNetForImageClassification

    with torch.device("meta"):
        return EfficientNetForImageClassification(config).state_dict()


def choose_variant(
    tensors: Mapping[str, torch.Tensor],
    candidates: Iterable[str],
    make_plan: Callable[[str], Plan],
    *,
    source: str,
) -> Plan:
    """The one candidate variant whose layout the tensors fit exactly.

    Cheap first (which keys exist: block counts, squeeze-excite, head), then the
    full shape comparison on the few survivors (widths). When nothing fits, the
    closest candidate's error names the tensors that do not fit it; when two fit
    (never for the published variants), the user must say which.
    """
    plans = [make_plan(v) for v in candidates]
    keys = set(tensors)
    scored = []
    for plan in plans:
        needed = {r.source for r in plan.table if not r.optional}
        allowed = {r.source for r in plan.table} | set(plan.consumed)
        scored.append((len(needed - keys) + len(keys - allowed), plan))
    best_keys = min(score for score, _ in scored)
    survivors = [plan for score, plan in scored if score == best_keys]
    fitting = []
    closest: tuple[int, Plan] | None = None
    for plan in survivors:
        problems = layout_problems(tensors, plan, expected_state(plan.config))
        if problems == 0:
            fitting.append(plan)
        elif closest is None or problems < closest[0]:
            closest = (problems, plan)
    if len(fitting) == 1:
        return fitting[0]
    if len(fitting) > 1:
        names = " and ".join(p.arch for p in fitting)
        raise ConfigError(f"The {source} checkpoint fits both {names}; pass --arch to say which.")
    assert closest is not None
    plan = closest[1]
    # Run the real steps on the closest layout so the error names each tensor that does not fit.
    try:
        check_against_model(apply_renames(tensors, plan), expected_state(plan.config), plan)
    except WeightsError as exc:
        raise WeightsError(f"No EfficientNet variant fits this {source} checkpoint; closest is {plan.arch}. {exc}") from None
    raise WeightsError(f"No EfficientNet variant fits this {source} checkpoint; pass --arch.")  # pragma: no cover


B_VARIANTS = tuple(name for name, v in VARIANTS.items() if not v.lite)
LITE_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.lite)

# --------------------------------------------------------------- preprocessing
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# PIL's resampling filter numbers, as preprocessor_config.json stores them.
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def preprocessor_config(
    *,
    crop: int,
    resize: int | None = None,
    resize_mode: str = "shortest_edge",
    resample: str = "bicubic",
    mean: Iterable[float] = IMAGENET_MEAN,
    std: Iterable[float] = IMAGENET_STD,
    rescale_factor: float = 1 / 255,
    rescale_offset: bool = False,
    include_top: bool = False,
) -> dict[str, Any]:
    """A ``preprocessor_config.json`` in transformers' EfficientNetImageProcessor format.

    ``resize_mode="shortest_edge"``: scale the shorter side to ``resize`` keeping the
    aspect ratio, then center-crop ``crop`` (torchvision's and timm's eval
    transform). ``"exact"``: resize to ``resize``×``resize`` (timm's "squash"), then crop.
    """
    if resample not in RESAMPLE:
        raise ConfigError(f"Unknown resampling filter {resample!r}; choose one of {', '.join(RESAMPLE)}.")
    resize = crop if resize is None else int(resize)
    if resize_mode == "shortest_edge":
        size: dict[str, int] = {"shortest_edge": resize}
    elif resize_mode == "exact":
        size = {"height": resize, "width": resize}
    else:
        raise ConfigError(f"resize_mode must be 'shortest_edge' or 'exact', got {resize_mode!r}.")
    return {
        "image_processor_type": "EfficientNetImageProcessor",
        "do_resize": True,
        "size": size,
        "resample": RESAMPLE[resample],
        "do_center_crop": True,
        "crop_size": {"height": int(crop), "width": int(crop)},
        "do_rescale": True,
        "rescale_factor": float(rescale_factor),
        "rescale_offset": bool(rescale_offset),
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
        "include_top": bool(include_top),
    }


def crop_pct_preprocessing(size: int, crop_pct: float, **kwargs: Any) -> dict[str, Any]:
    """timm's eval transform: resize to ``floor(size / crop_pct)`` then center-crop ``size``."""
    return preprocessor_config(crop=size, resize=math.floor(size / crop_pct), **kwargs)


def labels_note(num_labels: int) -> str | None:
    """A note for reports when the head is not ImageNet-1k."""
    if num_labels == 1000:
        return None
    if num_labels == 0:
        return "The checkpoint has no classifier: the converted model gives features only."
    return f"The classifier has {num_labels} outputs, not ImageNet-1k's 1000: labels are LABEL_0…LABEL_{num_labels - 1}."


__all__ = [
    "B_VARIANTS", "Checkpoint", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN", "INCEPTION_STD",
    "KERAS_STYLE", "LITE_VARIANTS", "OUR_PARTS", "PERMUTES", "Plan", "ReferenceUnavailable", "Rename", "Renamed", "RESAMPLE", "TORCH_STYLE",
    "VerifyResult", "apply_renames", "build_table", "check_against_model", "choose_variant", "compare_outputs",
    "count_classes", "crop_pct_preprocessing", "expected_state", "labels_note",
    "layout_problems", "pixel_values_from_raw", "preprocessor_config", "variant_config",
]
