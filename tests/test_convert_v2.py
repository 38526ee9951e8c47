"""effnet convert on EfficientNetV2 checkpoints: timm's and torchvision's, with their numbers and preprocessing.

Each source model gets seeded random weights with real batch-norm statistics (so the
deep blocks carry signal and an eps or padding mistake shows far above 1e-4), is
saved in its library's format, converted with ``--verify``, loaded back through the
public loader and run beside the source at its native size and at another size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from effnet_cli.convert import convert_checkpoint
from effnet_cli.core.model_v2 import EfficientNetV2ForImageClassification
from tests.test_convert import TOLERANCE, inputs, load, logits, randomize, rel_diff, save_safetensors

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """One thread: the busy 2-core machine makes torch's OpenMP threads wait on each other."""
    yield


def _check(source: torch.nn.Module, out: Path, sizes: tuple[int, ...]) -> EfficientNetV2ForImageClassification:
    model, _ = load(out)
    assert type(model) is EfficientNetV2ForImageClassification
    for size in sizes:
        x = inputs(size)[:1]
        with torch.no_grad():
            theirs = source(x)
        assert theirs.abs().max() > 1e-2  # not two near-zero tensors
        assert rel_diff(logits(model, x), theirs) < TOLERANCE, size
    return model


def _timm(arch: str, tmp_path: Path, seed: int) -> tuple[torch.nn.Module, Path]:
    source = randomize(timm.create_model(arch, pretrained=False), seed=seed)
    return source, save_safetensors(source, tmp_path / f"{arch}.safetensors")


def test_timm_tf_efficientnetv2_b0_native_and_odd_size(tmp_path):
    source, path = _timm("tf_efficientnetv2_b0", tmp_path, seed=11)
    report = convert_checkpoint(path, tmp_path / "out", arch="tf_efficientnetv2_b0", verify=True, verify_size=64)
    assert report.verify.passed and "tf_efficientnetv2_b0" in report.verify.reference
    config = report.config
    assert (config.model_type, config.padding_mode, config.batch_norm_eps) == ("efficientnet_v2", "same", 1e-3)
    assert config.image_size == 192  # timm's input_size for tf_efficientnetv2_b0.in1k
    model = _check(source, tmp_path / "out", (192, 97, 64))
    # The check is sensitive: symmetric padding is far off where TF-'same' pads asymmetrically.
    wrong = EfficientNetV2ForImageClassification(config.__class__.from_dict({**config.to_dict(),
                                                                                "padding_mode": "symmetric"}))
    wrong.load_state_dict(model.state_dict())
    x = inputs(64)[:1]
    assert rel_diff(logits(wrong.eval(), x), source(x)) > 1e-2


def test_timm_efficientnetv2_rw_t_symmetric(tmp_path):
    source, path = _timm("efficientnetv2_rw_t", tmp_path, seed=12)
    report = convert_checkpoint(path, tmp_path / "out", arch="efficientnetv2_rw_t")
    assert (report.config.padding_mode, report.config.batch_norm_eps) == ("symmetric", 1e-5)
    assert report.config.head_channels == 1024  # 1280 at width 0.8
    # timm's pretrained config: 224 at crop_pct 1.0, bicubic.
    assert report.preprocessing["crop_size"] == {"height": 224, "width": 224}
    assert report.preprocessing["resample"] == 3
    _check(source, tmp_path / "out", (224, 77))  # native (timm's input_size) and odd


def test_timm_tf_efficientnetv2_s_small_sizes(tmp_path):
    source, path = _timm("tf_efficientnetv2_s", tmp_path, seed=13)
    report = convert_checkpoint(path, tmp_path / "out", arch="tf_efficientnetv2_s.in21k_ft_in1k")
    assert report.arch == "tf_efficientnetv2_s.in21k_ft_in1k"
    assert report.preprocessing["image_mean"] == [0.5, 0.5, 0.5]  # that tag's mean/std
    _check(source, tmp_path / "out", (96, 65))


@pytest.mark.slow
def test_timm_tf_efficientnetv2_s_native_size(tmp_path):
    source, path = _timm("tf_efficientnetv2_s", tmp_path, seed=14)
    report = convert_checkpoint(path, tmp_path / "out", arch="tf_efficientnetv2_s")
    _check(source, tmp_path / "out", (report.config.image_size, 301))


def _torchvision(arch: str, tmp_path: Path, seed: int) -> tuple[torch.nn.Module, Path]:
    source = randomize(getattr(torchvision.models, arch)(weights=None), seed=seed)
    path = tmp_path / f"{arch}.pth"
    torch.save(source.state_dict(), path)  # a pickle, read with weights_only=True
    return source, path


def test_torchvision_efficientnet_v2_s_detected_from_shapes(tmp_path):
    source, path = _torchvision("efficientnet_v2_s", tmp_path, seed=15)
    report = convert_checkpoint(path, tmp_path / "out", verify=True, verify_size=64)  # no --arch: shapes tell
    assert (report.source, report.arch) == ("torchvision", "efficientnet_v2_s")
    assert report.verify.passed
    assert (report.config.padding_mode, report.config.batch_norm_eps) == ("symmetric", 1e-3)
    # The weight enum's transforms: resize 384 bilinear, crop 384, ImageNet mean/std.
    weights = torchvision.models.EfficientNet_V2_S_Weights.DEFAULT.transforms()
    assert report.preprocessing["size"] == {"shortest_edge": weights.resize_size[0]} == {"shortest_edge": 384}
    assert report.preprocessing["resample"] == 2
    assert report.preprocessing["image_mean"] == pytest.approx(list(weights.mean))
    _check(source, tmp_path / "out", (96, 65))


@pytest.mark.slow
def test_torchvision_efficientnet_v2_s_native_size(tmp_path):
    source, path = _torchvision("efficientnet_v2_s", tmp_path, seed=16)
    convert_checkpoint(path, tmp_path / "out", arch="efficientnet_v2_s")
    _check(source, tmp_path / "out", (384, 129))


@pytest.mark.slow
def test_torchvision_efficientnet_v2_m(tmp_path):
    source, path = _torchvision("efficientnet_v2_m", tmp_path, seed=17)
    report = convert_checkpoint(path, tmp_path / "out", verify=True, verify_size=64)
    assert report.arch == "efficientnet_v2_m" and report.config.image_size == 480
    _check(source, tmp_path / "out", (480, 97))


def test_v2_cli_convert_with_verify(tmp_path):
    from typer.testing import CliRunner

    from effnet_cli.cli.app import app

    _, path = _timm("efficientnetv2_rw_t", tmp_path, seed=18)
    result = CliRunner().invoke(app, ["convert", str(path), "--from", "timm", "--arch", "efficientnetv2_rw_t",
                                      "-o", str(tmp_path / "out"), "--verify"])
    assert result.exit_code == 0, result.output
    assert "efficientnetv2_rw_t" in result.output and "passed" in result.output


def _keras_v2(name: str, size: int, seed: int, tmp_path: Path) -> tuple[object, Path, object]:
    """(Keras's ``name`` at ``size`` px with seeded weights, its saved weights file, the keras module)."""
    from tests.test_convert import _randomize_keras, keras_on_torch

    keras = keras_on_torch()
    source = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    # BN scales below one keep these deep nets' logits of order one, where float32 agrees to 1e-6.
    _randomize_keras(source, seed=seed, gamma=(0.4, 0.6))
    path = tmp_path / f"{name}.weights.h5"
    source.save_weights(str(path))
    return source, path, keras


@pytest.mark.slow  # building three Keras models takes about ten seconds
def test_keras_efficientnet_v2_b0_native_and_odd_size(tmp_path):
    import numpy as np

    from effnet_cli.convert.common import pixel_values_from_raw

    source, path, keras = _keras_v2("EfficientNetV2B0", 224, 19, tmp_path)
    report = convert_checkpoint(path, tmp_path / "out", verify=True, verify_size=64)  # the variant from the shapes
    assert (report.source, report.arch) == ("keras", "EfficientNetV2B0") and report.verify.passed
    # Keras's in-graph Rescaling(1/255) and Normalization(ImageNet mean, std²), folded.
    assert report.preprocessing["rescale_factor"] == pytest.approx(1 / 255)
    assert report.preprocessing["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert report.preprocessing["image_std"] == pytest.approx([0.229, 0.224, 0.225])
    model, _ = load(tmp_path / "out")
    for size in (224, 97):
        if size != 224:
            source = keras.applications.EfficientNetV2B0(weights=None, input_shape=(size, size, 3),
                                                         classifier_activation=None)
            source.load_weights(str(path))
        raw = torch.randint(0, 256, (1, 3, size, size), generator=torch.Generator().manual_seed(7)).float()
        theirs = torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(source(raw.permute(0, 2, 3, 1).numpy()))))
        assert theirs.abs().max() > 1e-2
        assert rel_diff(logits(model, pixel_values_from_raw(raw, report.preprocessing)), theirs) < TOLERANCE, size


@pytest.mark.slow
def test_keras_efficientnet_v2_s_rescales_to_minus_one_one(tmp_path):
    _, path, _ = _keras_v2("EfficientNetV2S", 96, 20, tmp_path)
    # --verify gives Keras the raw pixels, so its in-graph Rescaling(1/128, offset=-1) is checked against ours.
    report = convert_checkpoint(path, tmp_path / "out", verify=True, verify_size=96)
    assert (report.arch, report.verify.passed) == ("EfficientNetV2S", True)
    assert report.preprocessing["rescale_factor"] == pytest.approx(1 / 128)
    assert report.preprocessing["rescale_offset"] is True and report.preprocessing["do_normalize"] is False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3", "EfficientNetV2M",
                                  "EfficientNetV2L"])
def test_keras_efficientnet_v2_variants_are_detected_and_match(name, tmp_path):
    """Every Keras EfficientNetV2 size: told apart by its shapes alone, and Keras's logits on raw pixels to 1e-4."""
    _, path, _ = _keras_v2(name, 64, 23, tmp_path)
    report = convert_checkpoint(path, tmp_path / "out", verify=True, verify_size=64)
    assert (report.source, report.arch, report.verify.passed) == ("keras", name, True), report.verify
