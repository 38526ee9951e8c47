"""effnet convert: each source library's checkpoint gives the source's own numbers.

Every source model gets seeded random weights with real batch-norm statistics
(running variance well below one, so eps and padding mistakes show up far above
the 1e-4 tolerance), is saved in its library's format, converted, loaded back
with ``load_pretrained`` and run beside the source model on the same input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

# Keras 3 runs on torch here, so no TensorFlow is needed; set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "torch")

from effnet_cli.convert import (  # noqa: E402
    ConversionReport,
    convert_checkpoint,
    detect_source,
    read_checkpoint,
    source_module,
)
from effnet_cli.errors import ConfigError, InputError, WeightsError  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run this module's convolutions on one thread.

    On a busy 2-core machine, torch's OpenMP threads wait on each other and the
    depthwise convolutions run 10-20x slower; one thread is fast and predictable.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------- helpers
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded weights that keep activations of order one and make every BN statistic matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.3)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model.eval()


def rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs|."""
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def load(out_dir: Path):
    """The converted directory through the public loader, as a user gets it."""
    from effnet_cli.hub import load_pretrained

    model, processor = load_pretrained(out_dir)
    return model, processor


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def save_safetensors(model: torch.nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def inputs(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------- source models
@pytest.fixture(scope="module")
def torchvision_b0(tmp_path_factory):
    torchvision = pytest.importorskip("torchvision")
    model = randomize(torchvision.models.efficientnet_b0(weights=None), seed=1)
    path = tmp_path_factory.mktemp("tv") / "efficientnet_b0.pth"
    torch.save(model.state_dict(), path)  # a pickle: read through weights_only=True
    return model, path


@pytest.fixture(scope="module")
def timm_b0(tmp_path_factory):
    timm = pytest.importorskip("timm")
    model = randomize(timm.create_model("efficientnet_b0", pretrained=False), seed=2)
    return model, save_safetensors(model, tmp_path_factory.mktemp("timm") / "efficientnet_b0.safetensors")


# ----------------------------------------------------------------- torchvision
def test_torchvision_b0_matches_and_verify_reports_the_diff(torchvision_b0, tmp_path):
    source, path = torchvision_b0
    report = convert_checkpoint(path, tmp_path / "b0", verify=True, verify_size=128)

    assert isinstance(report, ConversionReport)
    assert (report.source, report.arch) == ("torchvision", "efficientnet_b0")  # both detected
    assert report.config.padding_mode == "symmetric" and report.config.batch_norm_eps == 1e-5
    assert report.num_tensors == report.source_tensors == len(source.state_dict())
    check = report.verify
    assert check is not None and check.passed and check.reference.startswith("torchvision")
    assert check.max_abs_diff is not None and check.max_rel_diff is not None and check.max_rel_diff < TOLERANCE
    assert check.to_dict()["input_shape"] == [2, 3, 128, 128]

    model, processor = load(tmp_path / "b0")
    for size in (128, 97):
        x = inputs(size)
        assert rel_diff(logits(model, x), source(x)) < TOLERANCE
    # torchvision's weight-enum transform: shorter side 256 (bicubic), crop 224, ImageNet mean/std.
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    assert processor.resample == 3 and tuple(processor.image_std) == pytest.approx((0.229, 0.224, 0.225))


def test_torchvision_b5_inferred_from_shapes(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    source = randomize(torchvision.models.efficientnet_b5(weights=None), seed=3)
    path = save_safetensors(source, tmp_path / "weights.safetensors")
    report = convert_checkpoint(path, tmp_path / "b5")
    assert report.arch == "efficientnet_b5"  # width from the head, depth from the block counts
    assert report.config.batch_norm_eps == 1e-3  # torchvision builds B5-B7 with eps=1e-3
    model, processor = load(tmp_path / "b5")
    x = inputs(64)
    assert rel_diff(logits(model, x), source(x)) < TOLERANCE
    assert processor.crop_size["height"] == 456


# ------------------------------------------------------------------------ timm
def test_timm_efficientnet_b0(timm_b0, tmp_path):
    source, path = timm_b0
    report = convert_checkpoint(path, tmp_path / "out", arch="efficientnet_b0")
    assert report.source == "timm" and report.arch.startswith("efficientnet_b0")
    assert report.config.padding_mode == "symmetric" and report.config.batch_norm_eps == 1e-5
    model, processor = load(tmp_path / "out")
    x = inputs(128)
    assert rel_diff(logits(model, x), source(x)) < TOLERANCE
    # timm's crop_pct 0.875: shorter side floor(224 / 0.875) = 256, crop 224, bicubic.
    assert processor.size == {"shortest_edge": 256} and processor.resample == 3


def test_timm_tf_efficientnet_b3_same_padding_at_two_sizes(tmp_path):
    timm = pytest.importorskip("timm")
    source = randomize(timm.create_model("tf_efficientnet_b3", pretrained=False), seed=4)
    path = save_safetensors(source, tmp_path / "tf_b3.safetensors")
    report = convert_checkpoint(path, tmp_path / "out", source="timm", arch="tf_efficientnet_b3")
    assert report.config.padding_mode == "same" and report.config.batch_norm_eps == 1e-3
    model, processor = load(tmp_path / "out")
    assert processor.crop_size["height"] == 300 and processor.size == {"shortest_edge": 331}  # crop_pct 0.904

    for size in (300, 128):  # native, and a size where TF-'same' pads differently than transformers' fixed scheme
        x = inputs(size)
        assert rel_diff(logits(model, x), source(x)) < TOLERANCE, size

    # The check is sensitive: symmetric padding would be far off at 128.
    x = inputs(128)
    wrong = type(model)(dataclasses.replace(model.config, padding_mode="symmetric"))
    wrong.load_state_dict(model.state_dict())
    assert rel_diff(logits(wrong.eval(), x), source(x)) > 1e-2


def test_timm_needs_arch_to_tell_tf_ports_apart(timm_b0, tmp_path):
    _, path = timm_b0
    with pytest.raises(ConfigError, match=r"--arch efficientnet_b0 or --arch tf_efficientnet_b0"):
        convert_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_timm_hub_folder_names_its_architecture(timm_b0, tmp_path):
    source, path = timm_b0
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(path.read_bytes())
    (folder / "config.json").write_text(json.dumps({
        "architecture": "efficientnet_b0", "num_classes": 1000,
        "pretrained_cfg": {"tag": "ra_in1k", "input_size": [3, 224, 224], "crop_pct": 0.95,
                           "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }))
    report = convert_checkpoint(folder, tmp_path / "out")
    assert (report.source, report.arch) == ("timm", "efficientnet_b0.ra_in1k")
    # The file's own pretrained config wins over timm's table.
    assert report.preprocessing["size"] == {"shortest_edge": 235} and report.preprocessing["resample"] == 2
    assert report.preprocessing["image_mean"] == [0.5, 0.5, 0.5]


# --------------------------------------------------------- efficientnet_pytorch
def test_efficientnet_pytorch_b2_detected(tmp_path):
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    # Built for 128 px: its static TF-'same' padding is then TF's padding at 128.
    source = randomize(efficientnet_pytorch.EfficientNet.from_name("efficientnet-b2", image_size=128), seed=5)
    path = tmp_path / "efficientnet-b2.pth"
    torch.save(source.state_dict(), path)
    report = convert_checkpoint(path, tmp_path / "out")
    assert (report.source, report.arch) == ("efficientnet_pytorch", "efficientnet-b2")
    assert report.config.padding_mode == "same"
    model, processor = load(tmp_path / "out")
    x = inputs(128)
    assert rel_diff(logits(model, x), source(x)) < TOLERANCE
    assert tuple(processor.image_mean) == pytest.approx((0.485, 0.456, 0.406))


# ----------------------------------------------------------------------- Keras
def _randomize_keras(model, seed: int = 6, gamma: tuple[float, float] = (0.75, 1.25)) -> None:
    """Seeded Keras weights with real batch-norm statistics; a smaller ``gamma`` keeps deep nets' logits of order 10."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            n = weights[0].shape[0]
            layer.set_weights([rng.uniform(*gamma, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n),
                               rng.uniform(0.3, 0.8, n)])
        elif kind == "Normalization":  # a mean/variance of its own, so the folding is tested
            layer.set_weights([np.array([0.45, 0.5, 0.55]), np.array([0.05, 0.06, 0.07]), weights[2]])
        else:
            fresh = []
            for w in weights:
                fan_in = (w.shape[0] * w.shape[1] if kind == "DepthwiseConv2D" else int(np.prod(w.shape[:-1])))
                fresh.append(rng.normal(0, fan_in**-0.5, w.shape) if w.ndim > 1 else rng.normal(0, 0.1, w.shape))
            layer.set_weights(fresh)


def keras_on_torch():
    """Keras, with h5py to read its files, on the torch backend; the test is skipped otherwise."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    if keras.backend.backend() != "torch":
        pytest.skip("keras is not on the torch backend in this process")
    return keras


def test_keras_b0_with_its_preprocessing_folded(tmp_path):
    keras = keras_on_torch()
    import numpy as np
    from PIL import Image

    from effnet_cli.convert.common import pixel_values_from_raw

    source = keras.applications.EfficientNetB0(weights=None, input_shape=(128, 128, 3), classifier_activation=None)
    _randomize_keras(source)
    path = tmp_path / "b0.weights.h5"
    source.save_weights(str(path))

    report = convert_checkpoint(path, tmp_path / "out")
    assert (report.source, report.arch) == ("keras", "EfficientNetB0")
    assert report.config.padding_mode == "same"
    # Rescaling(1/255) + Normalization(mean, variance) folded into the processor.
    assert report.preprocessing["image_mean"] == pytest.approx([0.45, 0.5, 0.55])
    assert report.preprocessing["image_std"] == pytest.approx([0.05**0.5, 0.06**0.5, 0.07**0.5], rel=1e-6)

    model, processor = load(tmp_path / "out")
    raw = torch.randint(0, 256, (2, 3, 128, 128), generator=torch.Generator().manual_seed(7)).float()
    theirs = torch.from_numpy(np.asarray(keras.ops.convert_to_numpy(source(raw.permute(0, 2, 3, 1).numpy()))))
    ours_in = pixel_values_from_raw(raw, report.preprocessing)
    assert rel_diff(logits(model, ours_in), theirs) < TOLERANCE

    # The loaded processor computes those same pixel values from an image.
    image = Image.fromarray(raw[0].permute(1, 2, 0).to(torch.uint8).numpy())
    numeric_only = type(processor).from_dict(processor.to_dict(), do_resize=False, do_center_crop=False)
    pixels = numeric_only(image, return_tensors="pt")["pixel_values"]
    assert (pixels[0] - ours_in[0]).abs().max() < 1e-4

    # tf.keras's legacy .h5 layout reads to the same tensors.
    from keras.src.legacy.saving import legacy_h5_format

    import h5py

    legacy = tmp_path / "b0_legacy.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    new, _ = read_checkpoint(path)
    old, name = read_checkpoint(legacy)
    assert name == "keras" and set(old.tensors) == set(new.tensors)
    assert all(torch.equal(old.tensors[k], new.tensors[k]) for k in new.tensors)


@pytest.mark.parametrize(
    ("layout", "layers", "expected_std"),
    [
        # Keras 3 model built with weights="imagenet": a second Rescaling divides by sqrt(std) once more.
        ("keras3", [("rescaling", "rescaling"), ("normalization", "normalization"), ("rescaling_1", "rescaling")],
         (0.229, 0.224, 0.225)),
        # Keras's published legacy files store the std where the variance belongs; Keras adds the fix.
        ("legacy", [("rescaling", "rescaling"), ("normalization", "")], (0.229, 0.224, 0.225)),
        # A Keras 3 model without the fix layer divides by sqrt(variance) only, and so do we.
        ("keras3", [("rescaling", "rescaling"), ("normalization", "normalization")],
         (0.229**0.5, 0.224**0.5, 0.225**0.5)),
    ],
)
def test_keras_imagenet_std_fix_is_folded(layout, layers, expected_std):
    from effnet_cli.convert import keras as keras_converter
    from effnet_cli.convert.common import Checkpoint

    tensors = {"normalization/mean": torch.tensor([0.485, 0.456, 0.406]),
               "normalization/variance": torch.tensor([0.229, 0.224, 0.225]), "normalization/count": torch.tensor(0.0)}
    ckpt = Checkpoint(Path("x.h5"), tensors, {"keras_format": layout, "keras_layers": layers})
    config, consumed, _ = keras_converter.preprocessing(ckpt, "b0")
    assert config["image_std"] == pytest.approx(expected_std, rel=1e-6)
    assert config["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert consumed == set(tensors)  # not reported as unexpected model tensors
    assert config["size"] == {"shortest_edge": 256} and config["crop_size"]["height"] == 224


def test_keras_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now fails
    with pytest.raises(WeightsError, match=r"pip install 'effnet-cli\[keras\]'"):
        convert_checkpoint(path, tmp_path / "out")


# ------------------------------------------------------------- transformers
def test_transformers_directory_and_bare_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    from effnet_cli.core.config import EfficientNetConfig

    hf_config = transformers.EfficientNetConfig.from_dict(EfficientNetConfig.from_variant("b0").to_dict())
    source = randomize(transformers.EfficientNetForImageClassification(hf_config), seed=8)
    source.save_pretrained(tmp_path / "hf")

    report = convert_checkpoint(tmp_path / "hf", tmp_path / "out", verify=True, verify_size=64)
    assert (report.source, report.arch) == ("hf", "efficientnet-b0")
    assert report.verify.passed and report.verify.max_rel_diff < TOLERANCE
    model, _ = load(tmp_path / "out")
    x = inputs(96)
    with torch.no_grad():
        assert rel_diff(logits(model, x), source(x).logits) < TOLERANCE

    # A weights file alone: variant from the shapes, the hub's google/efficientnet preprocessing.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "weights.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    report = convert_checkpoint(bare / "weights.safetensors", tmp_path / "out2")
    assert report.arch == "efficientnet-b0" and report.config.padding_mode == "fixed"
    assert report.preprocessing["include_top"] is True and report.preprocessing["resample"] == 0


# ------------------------------------------------------ detection and errors
def test_detect_source_for_each_layout(torchvision_b0, timm_b0):
    torchvision_keys = dict.fromkeys(torchvision_b0[0].state_dict())
    timm_keys = dict.fromkeys(timm_b0[0].state_dict())
    assert detect_source(torchvision_keys) == "torchvision"
    assert detect_source(timm_keys) == "timm"
    ep = {"_conv_stem.weight": 0, "_bn0.weight": 0, "_blocks.0._depthwise_conv.weight": 0}
    assert detect_source(ep) == "efficientnet_pytorch"
    assert detect_source({"efficientnet.embeddings.convolution.weight": 0}) == "hf"
    assert detect_source({"embeddings.convolution.weight": 0}) == "hf"  # a base EfficientNetModel
    assert detect_source({"stem_conv/kernel": 0, "top_conv/kernel": 0}) == "keras"
    with pytest.raises(WeightsError, match="--from"):
        detect_source({"backbone.conv1.weight": 0})


def test_missing_and_misshaped_tensors_are_named(timm_b0, tmp_path):
    source, _ = timm_b0
    state = dict(source.state_dict())
    del state["blocks.2.1.conv_dw.weight"]
    state["conv_head.weight"] = state["conv_head.weight"][:1000]
    from safetensors.torch import save_file

    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError) as err:
        convert_checkpoint(path, tmp_path / "out", arch="efficientnet_b0")
    message = str(err.value)
    assert "blocks.2.1.conv_dw.weight" in message and "missing" in message
    assert "conv_head.weight (1000, 320, 1, 1) (needs (1280, 320, 1, 1))" in message and "mis-shaped" in message
    assert not (tmp_path / "out").exists()  # nothing written on error


def test_wrong_arch_names_the_tensors(torchvision_b0, tmp_path):
    _, path = torchvision_b0
    with pytest.raises(WeightsError, match=r"efficientnet_b1: \d+ missing tensor\(s\): features\.1\.1\.block"):
        convert_checkpoint(path, tmp_path / "out", arch="efficientnet_b1")  # b1 has 2 blocks in stage 0, b0 one
    with pytest.raises(WeightsError, match="does not have timm's EfficientNet key layout.*torchvision"):
        convert_checkpoint(path, tmp_path / "out", source="timm")
    with pytest.raises(ConfigError, match="Unknown source"):
        convert_checkpoint(path, tmp_path / "out", source="caffe")


def test_verify_refuses_a_wrong_conversion(timm_b0, tmp_path, monkeypatch):
    timm_converter = source_module("timm")
    original = timm_converter._plan_for

    def wrong_padding(*args, **kwargs):
        plan = original(*args, **kwargs)
        plan.config = dataclasses.replace(plan.config, padding_mode="same")  # timm's own weights are symmetric
        return plan

    monkeypatch.setattr(timm_converter, "_plan_for", wrong_padding)
    _, path = timm_b0
    with pytest.raises(WeightsError, match=r"Verification failed.*timm .*efficientnet_b0"):
        convert_checkpoint(path, tmp_path / "out", arch="efficientnet_b0", verify=True, verify_size=64)
    assert not (tmp_path / "out").exists()


def test_output_directory_is_written_atomically(torchvision_b0, tmp_path):
    _, path = torchvision_b0
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(WeightsError, match="not empty"):
        convert_checkpoint(path, out)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="notes.txt"):  # --overwrite never deletes a file convert did not write
        convert_checkpoint(path, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    convert_checkpoint(path, out)  # an empty directory is filled
    convert_checkpoint(path, out, overwrite=True)  # one holding only convert's own files is replaced
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directories left behind
