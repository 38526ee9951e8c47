"""The fast path gives the plain model's numbers: the guard every optimisation has to pass.

* logits of ``optimize(model)`` within 1e-4 (relative to the largest logit) of the
  plain model's on the same tensors, for every padding mode and activation the
  configs allow, at native and odd input sizes;
* the same top-1 on every sample photo, with real weights (the bundled Lite0)
  when they can be loaded, else a seeded random b0 with a scaled classifier;
* reduced-size JPEG decoding (draft mode, the default) changes no top-1 on the
  sample photos, nor on camera-sized versions of them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import randomize
from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
from effnet_cli.runtime.fused import FusedConv2d, fuse_model, keep_freed_memory, optimize

TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(variant: str = "b0", seed: int = 0, **overrides) -> EfficientNetForImageClassification:
    config = EfficientNetConfig.from_variant(variant, **overrides)
    return randomize(EfficientNetForImageClassification(config), seed=seed).eval()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


@pytest.fixture(scope="module")
def real_model():
    """(model, processor, name): the bundled Lite0 ImageNet weights, or a random b0 whose top-1 is well separated."""
    from effnet_cli import load_pretrained
    from effnet_cli.errors import EffnetError

    try:
        model, processor = load_pretrained("lite0")
        return model, processor, "lite0"
    except (EffnetError, ImportError):  # bundled weights not installed: random weights still test agreement
        from effnet_cli.hub import default_processor

        model = random_model(seed=11)
        with torch.no_grad():
            model.classifier.weight.mul_(20)
        return model, default_processor(model.config), "random b0"


# ------------------------------------------------------------------ logits
@pytest.mark.parametrize("overrides", [
    {},  # the hub's b0: fixed TF padding, SiLU
    {"padding_mode": "same"},  # TF 'same' per input size (Keras, timm tf_*)
    {"padding_mode": "symmetric"},  # torchvision / timm
    {"hidden_act": "relu6", "use_squeeze_excite": False},
    {"hidden_act": "gelu"},
    {"hidden_act": "selu"},  # no oneDNN post-op: conv, then the activation in place
], ids=["fixed", "same", "symmetric", "relu6-no-se", "gelu", "selu"])
@pytest.mark.parametrize("size", [(224, 224), (97, 131)], ids=["224", "97x131"])
def test_logits_match_the_plain_model(overrides, size):
    model = random_model(**overrides)
    fast = optimize(model)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(x).logits
        got = fast(x).logits
        got_channels_last = fast(x.contiguous(memory_format=torch.channels_last)).logits
    assert relative_error(got, want) < TOLERANCE
    assert relative_error(got_channels_last, want) < TOLERANCE
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_lite0_config_and_b3_match(real_model):
    # Lite: ReLU6, no squeeze-excite, TF 'same' padding; b3: more blocks, another resolution.
    for model in (random_model("lite0"), random_model("b3")):
        fast = optimize(model)
        x = torch.randn(1, 3, 240, 240, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            assert relative_error(fast(x).logits, model(x).logits) < TOLERANCE


def test_features_hidden_states_and_stages_match():
    model = random_model()
    fast = optimize(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = model(x, output_hidden_states=True)
        got = fast(x, output_hidden_states=True)
        assert len(got.hidden_states) == len(want.hidden_states)
        for g, w in zip(got.hidden_states, want.hidden_states):
            assert relative_error(g, w) < TOLERANCE
        base, fast_base = model.efficientnet, fast.efficientnet
        assert relative_error(fast_base(x).pooler_output, base(x).pooler_output) < TOLERANCE
        for stage in (0, 3, 6):
            assert relative_error(fast_base.stage_output(x, stage), base.stage_output(x, stage)) < TOLERANCE


def test_portable_path_matches_too():
    # What CUDA/MPS (or a torch without oneDNN) run: conv2d + in-place activation, and F.pad where asked.
    model = random_model(padding_mode="same")
    x = torch.randn(2, 3, 101, 224, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = model(x).logits
        for switches in ({"onednn": False}, {"onednn": False, "fold_padding": False, "in_place": False}):
            fast = optimize(model)
            slow = fuse_model(_unfused(model), **switches)
            assert relative_error(slow(x).logits, want) < TOLERANCE
            assert relative_error(fast(x).logits, want) < TOLERANCE


def _unfused(model: nn.Module) -> nn.Module:
    """The model with batch norms folded and nothing else, as fuse_model expects it."""
    from effnet_cli.runtime.fused import fold_batch_norms

    return fold_batch_norms(copy.deepcopy(model).eval())


def test_grad_mode_and_requires_grad_inputs_still_work():
    model = random_model()
    fast = optimize(model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    with torch.inference_mode():
        want = model(x.detach()).logits
    got = fast(x).logits  # grad mode on, input needs grad: the portable path
    assert relative_error(got.detach(), want) < TOLERANCE


def test_effnet_cli_optimize_is_the_function_whatever_was_imported_first():
    import effnet_cli
    import effnet_cli.runtime.engine  # noqa: F401 - imports the module effnet_cli.runtime.fused

    model = random_model(seed=5)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    assert effnet_cli.optimize is optimize
    fast = effnet_cli.optimize(model, device="cpu", dtype=None)
    with torch.inference_mode():
        assert relative_error(fast(x).logits, model(x).logits) < TOLERANCE
    assert getattr(fast, "optimized", False) and effnet_cli.runtime.fused.keep_freed_memory is keep_freed_memory


def test_the_original_model_is_untouched():
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimize(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_every_conv_is_fused_and_nothing_pads_by_copy():
    # A regression here is not wrong, only slow: a plain conv, a batch norm or an F.pad copy back in the path.
    for model in (random_model(), random_model("lite0")):
        fast = optimize(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        plain_convs = [n for n, m in fast.named_modules() if isinstance(m, nn.Conv2d)]
        assert plain_convs == []
        fused = [m for m in fast.modules() if isinstance(m, FusedConv2d)]
        assert fused and all(m.explicit_pad is None for m in fused)
        assert all(p.requires_grad is False for p in fast.parameters())


def test_bfloat16_runs_close():
    model = random_model()
    fast = optimize(model, dtype="bfloat16")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        got = fast(x).logits
        want = model(x).logits
    assert got.dtype == torch.float32  # the classifier runs in float32: logits are not rounded to bfloat16
    assert relative_error(got, want) < 5e-2  # bfloat16 keeps 8 bits of mantissa: opt-in, never the default


def test_bfloat16_keeps_stem_first_stage_and_head_in_float32():
    """The parts whose bfloat16 rounding flipped top-1 classes stay float32; everything else is bfloat16."""
    model = random_model()
    fast = optimize(model, dtype="bfloat16")
    base = fast.efficientnet
    first_stage = [b for b in model.efficientnet.encoder.blocks if b.spec.stage == 0]

    def dtypes(module: nn.Module) -> set[torch.dtype]:
        return {p.dtype for p in module.parameters()}

    assert dtypes(base.embeddings) == {torch.float32}
    assert dtypes(fast.classifier) == {torch.float32}
    blocks = list(base.encoder.blocks)
    assert all(dtypes(b) == {torch.float32} for b in blocks[:len(first_stage)])
    assert all(dtypes(b) == {torch.bfloat16} for b in blocks[len(first_stage):])
    assert dtypes(base.encoder.top_conv) == {torch.bfloat16}
    assert fast.input_dtype == torch.float32
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        out = fast(x, output_hidden_states=True)
        stage = base.stage_output(x.contiguous(memory_format=torch.channels_last), 2)
        plain_stage = model.efficientnet.stage_output(x, 2)
    assert out.logits.dtype == torch.float32 and out.hidden_states[-1].dtype == torch.bfloat16
    assert relative_error(stage, plain_stage) < 5e-2
    # The float32 path is untouched: no islands, float32 weights throughout.
    plain_fast = optimize(model)
    assert not hasattr(plain_fast, "input_dtype")
    assert {p.dtype for p in plain_fast.parameters()} == {torch.float32}


def test_optimize_sets_the_allocator_on_cpu_unless_told_not_to(monkeypatch):
    from effnet_cli import malloc

    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append(1))
    model = random_model(seed=6)
    optimize(model, keep_freed_memory=False)
    assert calls == []
    optimize(model)
    assert calls == [1]


def test_keep_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() == first
    assert isinstance(first, bool)


# ------------------------------------------------------------------ photos
def _engine(model, processor, **kwargs):
    from effnet_cli.runtime.engine import Engine

    return Engine(model, processor, device="cpu", **kwargs)


def test_top1_agrees_on_every_sample_photo(real_model, photos):
    model, processor, name = real_model
    x = processor([Image.open(p) for p in photos], return_tensors="pt")["pixel_values"]
    engine = _engine(model, processor)
    with torch.inference_mode():
        want = model(x).logits
    got = engine.logits(x)
    assert relative_error(got, want) < TOLERANCE, name
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist(), name


def _top1_through_the_loader(engine, paths) -> list[int]:
    from effnet_cli.runtime.engine import classify_paths

    out = []
    for results in classify_paths(engine, [str(p) for p in paths], top_k=1, batch_size=4, workers=0):
        for result in results:
            assert result.ok, result.error
            out.append(result.predictions[0].index)
    return out


@pytest.fixture(scope="module")
def camera_photos(photos, tmp_path_factory):
    """The sample photos upscaled to camera sizes, where draft mode decodes at 1/2 to 1/8 scale."""
    directory = tmp_path_factory.mktemp("camera")
    out = []
    for i, path in enumerate(photos):
        img = Image.open(path).convert("RGB")
        long_side = (1600, 2400, 3200)[i % 3]
        scale = long_side / max(img.size)
        big = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        target = directory / f"{path.stem}-{long_side}.jpg"
        big.save(target, "JPEG", quality=92)
        out.append(target)
    return out


def test_reduced_size_decoding_changes_no_top1(real_model, photos, camera_photos):
    model, processor, name = real_model
    draft = _engine(model, processor, draft=True)
    full = _engine(model, processor, draft=False)
    assert "draft_size" in draft.open_kwargs and "draft_size" not in full.open_kwargs
    paths = [*photos, *camera_photos]
    # Draft mode must actually reduce something here, or this test proves nothing.
    from effnet_cli.data import open_image

    reduced = [p for p in paths if open_image(p, **draft.open_kwargs).size != open_image(p).size]
    assert len(reduced) >= len(camera_photos)
    assert _top1_through_the_loader(draft, paths) == _top1_through_the_loader(full, paths), name

