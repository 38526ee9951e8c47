"""EfficientNetV2: the config's rows, parameter counts against timm and torchvision, outputs, saving, training paths."""

from __future__ import annotations

import json

import pytest
import torch

from effnet_cli.core.config_v2 import EfficientNetV2Config, read_config
from effnet_cli.core.model import EfficientNetForImageClassification
from effnet_cli.core.model_v2 import (
    DropPath,
    EfficientNetV2ForImageClassification,
    EfficientNetV2Model,
    model_class_for,
)
from effnet_cli.errors import ConfigError
from effnet_cli.weights.variants_v2 import V2_VARIANTS
from tests.conftest import randomize

pytestmark = pytest.mark.usefixtures("one_thread")  # busy 2-core machines make torch's threads wait on each other

# Our variant -> the timm architecture with the same body (parameters do not depend on padding or eps).
TIMM_ARCH = {name: f"tf_efficientnetv2_{name.removeprefix('v2-')}" for name in V2_VARIANTS}


def tiny(**values) -> EfficientNetV2Config:
    """A V2-S body at a quarter of its width and depth: every block type, runs in milliseconds."""
    values = {"width_coefficient": 0.25, "depth_coefficient": 0.25, "image_size": 64, "num_labels": 5, **values}
    return EfficientNetV2Config.from_body("s", **values)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return randomize(EfficientNetV2ForImageClassification(tiny()), seed=3).eval()


def _meta_params(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


@pytest.mark.parametrize("variant", list(V2_VARIANTS))
def test_variant_parameters_match_timm(variant: str) -> None:
    timm = pytest.importorskip("timm")
    config = EfficientNetV2Config.from_variant(variant)
    ours = _meta_params(lambda: EfficientNetV2ForImageClassification(config))
    assert ours == _meta_params(lambda: timm.create_model(TIMM_ARCH[variant]))


@pytest.mark.parametrize("variant", ["s", "m", "l"])
def test_variant_parameters_match_torchvision(variant: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    config = EfficientNetV2Config.from_variant(f"v2-{variant}")
    ours = _meta_params(lambda: EfficientNetV2ForImageClassification(config))
    assert ours == _meta_params(lambda: getattr(torchvision.models, f"efficientnet_v2_{variant}")())


def test_v2_s_rows_are_typed() -> None:
    config = EfficientNetV2Config.from_variant("v2-s")
    stages = config.stages()
    assert [s.block_type for s in stages] == ["conv", "fused", "fused", "mbconv", "mbconv", "mbconv"]
    assert [s.repeats for s in stages] == [2, 4, 4, 6, 9, 15]
    assert config.stem_channels == 24 and config.head_channels == config.hidden_dim == 1280
    blocks = config.blocks()
    # TF's rule: a block keeps its input whenever shapes allow, the first of the 24->24 conv stage included.
    assert blocks[0].residual and not blocks[2].residual
    assert blocks[-1].drop_rate == pytest.approx(0.2 * 39 / 40)


def test_b_variants_round_channels_to_the_nearest_multiple() -> None:
    # B2 widens by 1.1: 48 * 1.1 = 52.8 -> 56, 16 * 1.1 = 17.6 -> 16 (V1's 10% rule would give 24).
    config = EfficientNetV2Config.from_variant("v2-b2")
    assert [s.out_channels for s in config.stages()][:3] == [16, 32, 56]
    assert config.head_channels == 1408


def test_config_round_trip_and_model_type(tmp_path) -> None:
    config = EfficientNetV2Config.from_variant("v2-b1", padding_mode="symmetric")
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "efficientnet_v2" and data["block_types"][:2] == ["conv", "fused"]
    again = read_config(tmp_path / "config.json")
    assert isinstance(again, EfficientNetV2Config) and again.blocks() == config.blocks()
    assert again.padding_mode == "symmetric"


@pytest.mark.parametrize(("change", "message"), [
    ({"padding_mode": "fixed"}, "padding_mode must be one of same, symmetric"),
    ({"block_types": ["conv", "fused", "fused", "mbconv", "mbconv", "dense"]}, "block_types"),
    ({"expand_ratios": [4, 4, 4, 4, 6, 6]}, "plain conv stage"),
    ({"block_types": ["conv", "fused"]}, "block_types has 2 entries for 6 stages"),
])
def test_bad_configs_are_refused(change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(**change)


def test_public_names() -> None:
    import effnet_cli

    assert effnet_cli.EfficientNetV2ForImageClassification is EfficientNetV2ForImageClassification
    assert effnet_cli.EfficientNetV2Model is EfficientNetV2Model and effnet_cli.EfficientNetV2Config is EfficientNetV2Config


def test_outputs(tiny_model) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tiny_model(x, output_hidden_states=True, labels=torch.tensor([1, 3]))
        base = tiny_model.efficientnet(x)
    assert out.logits.shape == (2, 5) and out.loss is not None and out.loss.ndim == 0
    assert len(out.hidden_states) == len(tiny_model.config.blocks()) + 1
    assert base.last_hidden_state.shape == (2, tiny_model.config.head_channels, 2, 2)
    assert torch.equal(base.pooler_output, base.last_hidden_state.mean(dim=(2, 3)))
    assert out.logits.std() > 1e-2  # the weights give distinct logits, so equality checks mean something


def test_save_and_reload_is_bit_identical(tiny_model, tmp_path) -> None:
    from effnet_cli.hub import load_pretrained

    tiny_model.save_pretrained(tmp_path)
    x = torch.randn(1, 3, 71, 71, generator=torch.Generator().manual_seed(2))
    for again in (EfficientNetV2ForImageClassification.from_pretrained(tmp_path), load_pretrained(tmp_path)[0]):
        assert type(again) is EfficientNetV2ForImageClassification
        assert again.state_dict().keys() == tiny_model.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tiny_model.state_dict().values()))
        with torch.no_grad():
            assert torch.equal(again(x).logits, tiny_model(x).logits)
    base = EfficientNetV2Model.from_pretrained(tmp_path)  # a classifier checkpoint under the base model
    with torch.no_grad():
        assert torch.equal(base(x).pooler_output, tiny_model.efficientnet(x).pooler_output)


def test_v1_classes_refuse_a_v2_config_and_ask_for_their_twin(tiny_model, tmp_path) -> None:
    tiny_model.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="'efficientnet_v2'"):
        EfficientNetForImageClassification.from_pretrained(tmp_path)
    assert model_class_for(tiny_model.config, EfficientNetForImageClassification) is EfficientNetV2ForImageClassification


def test_padding_conventions_differ_where_tf_same_is_asymmetric(tiny_model) -> None:
    symmetric = EfficientNetV2ForImageClassification(tiny(padding_mode="symmetric")).eval()
    symmetric.load_state_dict(tiny_model.state_dict())
    # Even inputs: TF-'same' pads a stride-2 3×3 conv (0, 1), symmetric (1, 1).
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.allclose(symmetric(x).logits, tiny_model(x).logits, atol=1e-3)


def test_drop_path_drops_whole_samples() -> None:
    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    x = torch.ones(64, 3, 4, 4)
    y = drop(x)
    per_sample = y.flatten(1)
    assert all(row.unique().tolist() in ([0.0], [2.0]) for row in per_sample)  # a sample is kept (×2) or dropped
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(drop.eval()(x), x)


def test_stochastic_depth_only_in_training(tiny_model) -> None:
    model = EfficientNetV2ForImageClassification(tiny(drop_connect_rate=0.9, dropout_rate=0.0))
    model.load_state_dict(tiny_model.state_dict())
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    model.train()
    torch.manual_seed(1)
    a = model(x).logits
    b = model(x).logits
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model) -> None:
    model = EfficientNetV2ForImageClassification(tiny(drop_connect_rate=0.0, dropout_rate=0.0))
    model.load_state_dict(tiny_model.state_dict())
    model.train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    labels = torch.tensor([0, 4])

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(x, labels=labels).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = grads()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))
