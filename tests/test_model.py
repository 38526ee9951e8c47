"""The model against transformers' EfficientNet: same keys, same numbers, same parameter counts."""

from __future__ import annotations

import pytest
import torch

from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetModel
from tests.conftest import randomize

transformers = pytest.importorskip("transformers")

PUBLISHED_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
    "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960,
}
# b0 runs at its native size; the larger variants at a smaller (odd-sized, to exercise padding) input.
INPUT_SIZE = {"b0": 224, "b1": 97, "b2": 96, "b3": 81, "b4": 64, "b5": 65, "b6": 64, "b7": 64}


def _reference(config: EfficientNetConfig, base: bool = False):
    hf_config = transformers.EfficientNetConfig.from_dict(config.to_dict())
    cls = transformers.EfficientNetModel if base else transformers.EfficientNetForImageClassification
    return cls(hf_config).eval()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    scale = b.abs().max().clamp_min(1e-6)
    assert (a - b).abs().max() / scale < rel, f"max diff {(a - b).abs().max():.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("variant", list(PUBLISHED_PARAMS))
def test_variant_matches_reference(variant: str) -> None:
    config = EfficientNetConfig.from_variant(variant)
    ours = randomize(EfficientNetForImageClassification(config), seed=1).eval()
    assert ours.num_parameters() == PUBLISHED_PARAMS[variant]

    ref = _reference(config)
    ref.load_state_dict(ours.state_dict(), strict=True)  # ours -> reference, nothing renamed
    again = ours
    again.load_state_dict(ref.state_dict(), strict=True)  # and back (same keys, same shapes)

    size = INPUT_SIZE[variant]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = again(x, output_hidden_states=True)
        b = ref(x, output_hidden_states=True)
        base_a = again.efficientnet(x)
        base_b = ref.efficientnet(x)
    assert b.logits.abs().max() > 1e-2  # the comparison is not between two near-zero tensors
    _close(a.logits, b.logits)
    _close(base_a.pooler_output, base_b.pooler_output)
    _close(base_a.last_hidden_state, base_b.last_hidden_state)
    assert len(a.hidden_states) == len(b.hidden_states) == len(config.blocks()) + 1
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        assert ha.shape == hb.shape
        _close(ha, hb)


@pytest.mark.parametrize("act", ["relu", "relu6", "gelu", "gelu_new", "selu", "mish", "silu"])
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_activations_and_pooling_match_reference(act: str, pooling: str) -> None:
    config = EfficientNetConfig.from_variant("b0", hidden_act=act, pooling_type=pooling, num_labels=10)
    ours = randomize(EfficientNetModel(config), seed=3).eval()
    if act in transformers.activations.ACT2FN:
        ref = _reference(config, base=True)
    else:  # transformers has no "selu": build it with another activation and swap torch's SELU in
        ref = _reference(EfficientNetConfig.from_variant("b0", pooling_type=pooling, num_labels=10), base=True)
        for module in ref.modules():
            for attr in ("activation", "expand_act", "depthwise_act", "act_reduce", "top_activation"):
                if hasattr(module, attr):
                    setattr(module, attr, torch.nn.SELU())
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 65, 63, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _close(ours(x).pooler_output, ref(x).pooler_output)


def test_return_dict_false_gives_tuples_like_reference() -> None:
    config = EfficientNetConfig.from_variant("b0", num_labels=3)
    ours = randomize(EfficientNetForImageClassification(config), seed=5).eval()
    ref = _reference(config)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        mine = ours(x, return_dict=False, output_hidden_states=True)
        theirs = ref(x, return_dict=False, output_hidden_states=True)
        base = ours.efficientnet(x, return_dict=False)
    assert isinstance(mine, tuple) and len(mine) == len(theirs) == 2
    _close(mine[0], theirs[0])
    assert isinstance(base, tuple) and len(base) == 2 and base[1].shape == (1, config.hidden_dim)


@pytest.mark.parametrize("num_labels,labels", [
    (5, torch.tensor([1, 4])),  # class indices: cross-entropy
    (1, torch.tensor([0.3, -1.2])),  # one output: MSE regression
    (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),  # multi-hot: BCE
])
def test_loss_matches_reference(num_labels: int, labels: torch.Tensor) -> None:
    config = EfficientNetConfig.from_variant("b0", num_labels=num_labels)
    ours = randomize(EfficientNetForImageClassification(config), seed=6).eval()
    ref = _reference(config)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        loss = ours(x, labels=labels).loss
        expected = ref(x, labels=labels).loss
    assert torch.isfinite(loss) and abs(loss.item() - expected.item()) < 1e-4 * max(1.0, abs(expected.item()))
    assert ours(x).loss is None


def test_pooling_exports_without_avgpool() -> None:
    """The pooled features come from a plain reduction, so tracing sees no hidden_dim-sized kernel."""
    config = EfficientNetConfig.from_variant("b0", num_labels=2)
    model = EfficientNetModel(config).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).pooler_output

    with torch.no_grad():
        traced = torch.jit.trace(Pooled(), torch.randn(1, 3, 64, 64))
    graph = str(traced.graph)
    assert "avg_pool2d" not in graph and "max_pool2d" not in graph
    with torch.no_grad():  # a traced AvgPool2d(hidden_dim) would still work; a fixed-size reshape would not
        assert traced(torch.randn(1, 3, 96, 80)).shape == (1, config.hidden_dim)


def test_stage_output_is_the_matching_hidden_state() -> None:
    config = EfficientNetConfig.from_variant("b0", num_labels=2)
    model = randomize(EfficientNetModel(config), seed=7).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        states = model(x, output_hidden_states=True).hidden_states
        last_block_of_stage = {b.stage: b.index for b in config.blocks()}
        for stage, block in last_block_of_stage.items():
            torch.testing.assert_close(model.stage_output(x, stage), states[block + 1])
    with pytest.raises(ValueError):
        model.stage_output(x, 7)


def test_lite_has_no_squeeze_excite_and_unscaled_stem_and_head() -> None:
    config = EfficientNetConfig.from_variant("lite4")
    model = EfficientNetModel(config)
    keys = model.state_dict().keys()
    assert not any("squeeze_excite" in k for k in keys)
    assert model.embeddings.convolution.out_channels == 32
    assert model.encoder.top_conv.out_channels == 1280 == config.hidden_dim
    stages = config.stages()
    assert stages[0].repeats == 1 and stages[-1].repeats == 1  # first and last not depth-scaled
    assert stages[1].repeats == 4  # ceil(1.8 * 2)
    assert isinstance(model.embeddings.activation, torch.nn.ReLU6)
