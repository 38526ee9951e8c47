"""Config: reference fields and defaults, config.json round trips, validation, scaling rules."""

from __future__ import annotations

import json

import pytest

from effnet_cli import ConfigError, EfficientNetConfig
from effnet_cli.core.config import VARIANTS, round_filters, round_repeats, tf_same_padding

transformers = pytest.importorskip("transformers")

# The reference conversion script's table (hidden_dim, width, depth, image size, dropout, depthwise_padding).
REFERENCE_TABLE = {
    "b0": (1280, 1.0, 1.0, 224, 0.2, []),
    "b1": (1280, 1.0, 1.1, 240, 0.2, [16]),
    "b2": (1408, 1.1, 1.2, 260, 0.3, [5, 8, 16]),
    "b3": (1536, 1.2, 1.4, 300, 0.3, [5, 18]),
    "b4": (1792, 1.4, 1.8, 380, 0.4, [6]),
    "b5": (2048, 1.6, 2.2, 456, 0.4, [13, 27]),
    "b6": (2304, 1.8, 2.6, 528, 0.5, [31]),
    "b7": (2560, 2.0, 3.1, 600, 0.5, [18]),
}
REFERENCE_FIELDS = [
    "num_channels", "image_size", "width_coefficient", "depth_coefficient", "depth_divisor", "kernel_sizes",
    "in_channels", "out_channels", "depthwise_padding", "strides", "num_block_repeats", "expand_ratios",
    "squeeze_expansion_ratio", "hidden_act", "hidden_dim", "pooling_type", "initializer_range",
    "batch_norm_eps", "batch_norm_momentum", "dropout_rate", "drop_connect_rate", "num_labels",
]


def test_defaults_equal_the_reference() -> None:
    ours, ref = EfficientNetConfig(), transformers.EfficientNetConfig()
    for name in REFERENCE_FIELDS:
        assert list(getattr(ours, name)) == list(getattr(ref, name)) if isinstance(getattr(ours, name), list) \
            else getattr(ours, name) == getattr(ref, name), name
    assert ours.num_hidden_layers == ref.num_hidden_layers


@pytest.mark.parametrize("variant", list(REFERENCE_TABLE))
def test_from_variant_gives_the_published_settings(variant: str) -> None:
    hidden, width, depth, size, dropout, padding = REFERENCE_TABLE[variant]
    config = EfficientNetConfig.from_variant(variant)
    assert (config.hidden_dim, config.width_coefficient, config.depth_coefficient, config.image_size,
            config.dropout_rate, config.depthwise_padding) == (hidden, width, depth, size, dropout, padding)
    assert config.num_labels == 1000
    assert config.id2label[281] == "tabby, tabby cat" and config.id2label[967] == "espresso"
    assert config.label2id["espresso"] == 967


def test_json_round_trip_through_transformers(tmp_path) -> None:
    ref = transformers.EfficientNetConfig(width_coefficient=1.2, depth_coefficient=1.4, hidden_dim=1536,
                                          depthwise_padding=[5, 18], num_labels=3, image_size=300)
    ref.save_pretrained(tmp_path)
    ours = EfficientNetConfig.from_json_file(tmp_path / "config.json")
    for name in REFERENCE_FIELDS:
        assert getattr(ours, name) == (list(getattr(ref, name)) if isinstance(getattr(ours, name), list)
                                       else getattr(ref, name)), name
    assert "transformers_version" in ours.extra  # unknown keys are kept
    ours.to_json_file(tmp_path / "ours.json")
    written = json.loads((tmp_path / "ours.json").read_text())
    assert written["transformers_version"] == transformers.__version__
    back = transformers.EfficientNetConfig.from_json_file(tmp_path / "ours.json")
    for name in REFERENCE_FIELDS:
        assert getattr(back, name) == getattr(ref, name) or list(getattr(back, name)) == list(getattr(ref, name)), name
    assert back.id2label == ref.id2label
    assert EfficientNetConfig.from_dict(ours.to_dict()).to_dict() == ours.to_dict()


@pytest.mark.parametrize("changes,field", [
    ({"width_coefficient": -1.0}, "width_coefficient"),
    ({"depth_coefficient": "deep"}, "depth_coefficient"),
    ({"kernel_sizes": [3, 3, 5]}, "lengths"),
    ({"hidden_act": "tanhh"}, "hidden_act"),
    ({"pooling_type": "median"}, "pooling_type"),
    ({"strides": [1, 3, 2, 2, 1, 2, 1]}, "strides"),
    ({"kernel_sizes": [3, 4, 5, 3, 5, 5, 3]}, "kernel_sizes"),
    ({"hidden_dim": 999}, "hidden_dim"),
    ({"dropout_rate": 1.5}, "dropout_rate"),
    ({"in_channels": [32, 16, 24, 40, 80, 100, 192]}, "in_channels"),
    ({"num_block_repeats": [1, 2, 0, 3, 3, 4, 1]}, "num_block_repeats"),
    ({"padding_mode": "reflect"}, "padding_mode"),
])
def test_wrong_values_raise_a_clear_error_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        EfficientNetConfig.from_dict({**EfficientNetConfig().to_dict(), **changes})
    assert issubclass(ConfigError, ValueError)


def test_unknown_variant_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="Unknown variant 'b9'.*b0"):
        EfficientNetConfig.from_variant("b9")


def test_config_json_that_is_not_json(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON config"):
        EfficientNetConfig.from_json_file(path)


def test_round_filters_edges() -> None:
    assert round_filters(32, 1.0) == 32
    assert round_filters(32, 1.1) == 32  # 35.2 -> 32: within 10%
    assert round_filters(1280, 1.1) == 1408
    assert round_filters(16, 1.4) == 24  # 22.4 -> 24 (nearest multiple of 8)
    assert round_filters(4, 1.0) == 8  # never below the divisor
    assert round_filters(36, 1.0) == 40  # 36 -> 40 rounds half up
    assert round_filters(44, 1.0, divisor=16) == 48  # 32 would be >10% below 44
    for channels in range(1, 400):
        for width in (1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0):
            out = round_filters(channels, width)
            assert out % 8 == 0 and out >= 0.9 * channels * width


def test_round_repeats_is_ceil() -> None:
    assert [round_repeats(n, 3.1) for n in (1, 2, 3, 4)] == [4, 7, 10, 13]
    assert round_repeats(3, 1.0) == 3 and round_repeats(1, 1.1) == 2


def test_tf_same_padding() -> None:
    assert tf_same_padding(224, 3, 2) == (0, 1)
    assert tf_same_padding(225, 3, 2) == (1, 1)
    assert tf_same_padding(112, 5, 2) == (1, 2)
    assert tf_same_padding(57, 5, 1) == (2, 2)


def test_compound_scaling_from_phi() -> None:
    base = EfficientNetConfig.from_compound_scaling(0)
    assert (base.width_coefficient, base.depth_coefficient, base.image_size) == (1.0, 1.0, 224)
    phi1 = EfficientNetConfig.from_compound_scaling(1)
    assert (phi1.depth_coefficient, phi1.width_coefficient) == (1.2, 1.1)
    assert phi1.image_size == 256  # 224 * 1.15 = 257.6, to a multiple of 8
    assert phi1.hidden_dim == 1408
    with pytest.raises(ConfigError, match="phi"):
        EfficientNetConfig.from_compound_scaling(-1)


def test_variant_table_is_complete() -> None:
    assert [v for v in VARIANTS] == [f"b{i}" for i in range(8)] + [f"lite{i}" for i in range(5)]
