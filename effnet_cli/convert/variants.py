"""Which published variant a checkpoint is: its config with the checkpoint's head, chosen from tensor shapes when not given."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from effnet_cli.convert.plan import Plan
from effnet_cli.convert.renames import apply_renames
from effnet_cli.convert.shapes import check_against_model, layout_problems
from effnet_cli.core.config import EfficientNetConfig
from effnet_cli.core.config_v2 import EfficientNetV2Config
from effnet_cli.weights.presets import imagenet_labels
from effnet_cli.errors import ConfigError, WeightsError
from effnet_cli.weights.variants import B_VARIANTS, LITE_VARIANTS  # noqa: F401 - the candidates source modules pass


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


def v2_config(body: str, *, num_labels: int, image_size: int, width: float = 1.0, depth: float = 1.0,
              **overrides: Any) -> EfficientNetV2Config:
    """Our EfficientNetV2 config for a source's architecture: a body of the V2 table, scaled, with the checkpoint's head."""
    if num_labels == 1000:
        overrides["id2label"] = dict(enumerate(imagenet_labels()))
    else:
        overrides["num_labels"] = num_labels
    return EfficientNetV2Config.from_body(body, width_coefficient=width, depth_coefficient=depth,
                                          image_size=image_size, **overrides)


def count_classes(tensors: Mapping[str, torch.Tensor], bias_key: str) -> int:
    """Classifier outputs, from the classifier bias (0 for a headless checkpoint)."""
    bias = tensors.get(bias_key)
    return int(bias.shape[0]) if bias is not None else 0


def expected_state(config: EfficientNetConfig) -> dict[str, torch.Tensor]:
    """Our model's state dict for ``config`` on the meta device: names and shapes, no memory."""
    from effnet_cli.core.model_v2 import model_class_for

    with torch.device("meta"):
        return model_class_for(config)(config).state_dict()


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


def labels_note(num_labels: int) -> str | None:
    """A note for reports when the head is not ImageNet-1k."""
    if num_labels == 1000:
        return None
    if num_labels == 0:
        return "The checkpoint has no classifier: the converted model gives features only."
    return f"The classifier has {num_labels} outputs, not ImageNet-1k's 1000: labels are LABEL_0…LABEL_{num_labels - 1}."
