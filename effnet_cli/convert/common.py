"""The names the per-source converters share, gathered from the modules that define them.

The four steps are one module each: :mod:`.renames` (1, 2: rename table and
permutes), :mod:`.shapes` (3: shape check), :mod:`.verify` (4: output check);
:mod:`.plan` holds :class:`Checkpoint`, :class:`Rename` and :class:`Plan`,
:mod:`.variants` picks a variant from tensor shapes, and the preprocessing
presets live with the weights in :mod:`effnet_cli.weights.presets`.
"""

from effnet_cli.convert.plan import Checkpoint, Plan, Rename
from effnet_cli.convert.renames import (
    KERAS_STYLE,
    PART_KINDS,
    PERMUTES,
    TORCH_STYLE,
    ParamStyle,
    Renamed,
    apply_renames,
    build_table,
)
from effnet_cli.convert.shapes import check_against_model, layout_problems
from effnet_cli.convert.variants import (
    B_VARIANTS,
    LITE_VARIANTS,
    choose_variant,
    count_classes,
    expected_state,
    labels_note,
    v2_config,
    variant_config,
)
from effnet_cli.convert.verify import ReferenceUnavailable, VerifyResult, compare_outputs, pixel_values_from_raw
from effnet_cli.weights.layout import OUR_PARTS
from effnet_cli.weights.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    RESAMPLE,
    crop_pct_preprocessing,
    preprocessor_config,
)

__all__ = [
    "B_VARIANTS", "Checkpoint", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN", "INCEPTION_STD",
    "KERAS_STYLE", "LITE_VARIANTS", "OUR_PARTS", "PART_KINDS", "PERMUTES", "ParamStyle", "Plan",
    "ReferenceUnavailable", "Rename", "Renamed", "RESAMPLE", "TORCH_STYLE",
    "VerifyResult", "apply_renames", "build_table", "check_against_model", "choose_variant", "compare_outputs",
    "count_classes", "crop_pct_preprocessing", "expected_state", "labels_note",
    "layout_problems", "pixel_values_from_raw", "preprocessor_config", "v2_config", "variant_config",
]
