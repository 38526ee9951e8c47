"""Step 3 of a conversion: every converted tensor checked against our model by name and shape."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from effnet_cli.convert.plan import Plan
from effnet_cli.convert.renames import PERMUTES, Renamed
from effnet_cli.errors import WeightsError
from effnet_cli.weights.state_dict import describe_problems, fit_state


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
    fit = fit_state(expected, converted)
    # Our keys without a table row are converter bugs, but name them all the same.
    missing = renamed.missing + sorted(k for k in fit.missing if k not in source_of)
    unexpected = renamed.unexpected + sorted(source_of[k] for k in fit.unexpected)
    wrong = [f"{source_of.get(key, key)} {tuple(got)} (needs {tuple(want)})" for key, got, want in sorted(fit.mismatched)]
    problems = describe_problems([("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)], limit=8)
    if problems:
        raise WeightsError(f"The {plan.source} checkpoint does not fit {plan.arch}: {problems}.")
    return converted


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
