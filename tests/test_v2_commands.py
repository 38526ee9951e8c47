"""A converted EfficientNetV2-S directory through every command: classify, embed, export, finetune, save/reload.

The directory comes from timm's ``tf_efficientnetv2_s`` with seeded weights (batch-norm
scales halved so the 40 blocks stay well conditioned in float32), converted with
``effnet convert`` and given a 96-pixel preprocessing so each run takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet_cli.core.model_v2 import EfficientNetV2ForImageClassification
from tests.cli_helpers import run
from tests.test_convert import randomize, save_safetensors

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 96


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory, one_thread) -> tuple[Path, torch.nn.Module]:
    """(converted directory, the timm model it came from)."""
    from effnet_cli.convert import convert_checkpoint

    source = randomize(timm.create_model("tf_efficientnetv2_s", pretrained=False), seed=21)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.mul_(0.5)
    root = tmp_path_factory.mktemp("v2s")
    convert_checkpoint(save_safetensors(source, root / "w.safetensors"), root / "model", arch="tf_efficientnetv2_s")
    processor_file = root / "model" / "preprocessor_config.json"
    processor = json.loads(processor_file.read_text())
    processor.update(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    processor_file.write_text(json.dumps(processor))
    return root / "model", source


def _pixels(directory: Path, photos: list[Path]) -> torch.Tensor:
    from PIL import Image

    from effnet_cli.core.processor import EfficientNetImageProcessor

    processor = EfficientNetImageProcessor.from_pretrained(directory)
    return processor([Image.open(p).convert("RGB") for p in photos], return_tensors="pt")["pixel_values"]


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])  # export: ~20 s
def test_classify_gives_timms_top_1(v2_dir, photos, backend):
    directory, source = v2_dir
    done = run(["classify", *map(str, photos), "--model", str(directory), "--format", "jsonl", "--top-k", "1",
                "-j", "0", "--exact-decode", "--backend", backend])
    assert done.exit_code == 0, done.stderr
    with torch.no_grad():
        theirs = source(_pixels(directory, photos)).argmax(-1).tolist()
    assert [r["predictions"][0]["index"] for r in _records(done.stdout)] == theirs


def test_embed_gives_1280_wide_features_and_stages(v2_dir, photos, tmp_path):
    directory, source = v2_dir
    done = run(["embed", *map(str, photos), "--model", str(directory), "-o", str(tmp_path / "f.npy"), "-j", "0",
                "--backend", "torch"])
    assert done.exit_code == 0, done.stderr
    features = np.load(tmp_path / "f.npy")
    assert features.shape == (len(photos), 1280)
    with torch.no_grad():
        theirs = source.forward_head(source.forward_features(_pixels(directory, photos)), pre_logits=True)
    assert np.abs(features - theirs.numpy()).max() / np.abs(theirs.numpy()).max() < 1e-4

    done = run(["embed", str(photos[0]), "--model", str(directory), "-o", str(tmp_path / "s.npy"), "-j", "0",
                "--features", "stage:3", "--backend", "torch"])
    assert done.exit_code == 0, done.stderr
    assert np.load(tmp_path / "s.npy").shape[-1] == 64  # V2-S's third (Fused-MBConv) stage ends 64 wide


@pytest.mark.slow  # exporting V2-S takes about 20 s here
def test_onnx_export_matches_in_onnxruntime(v2_dir, photos, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from effnet_cli.hub import load_pretrained

    directory, _ = v2_dir
    done = run(["export", str(directory), "-o", str(tmp_path / "onnx")])
    assert done.exit_code == 0, done.stderr
    pixels = _pixels(directory, photos)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
    model, _ = load_pretrained(directory)
    with torch.no_grad():
        ours = model(pixels).logits.numpy()
    assert np.abs(logits - ours).max() / np.abs(ours).max() < 1e-4
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["model_type"] == "efficientnet_v2"


def test_finetune_trains_a_v2_and_classify_uses_it(v2_dir, tmp_path):
    from effnet_cli import finetune
    from effnet_cli.hub import load_pretrained
    from tests.test_finetune import make_dataset

    directory, _ = v2_dir
    data = make_dataset(tmp_path / "data", per_class=4)
    finetune(str(data), tmp_path / "out", model=str(directory), image_size=32, batch_size=4, epochs=1,
             freeze="none", workers=0, val_split=0.0)
    model, _ = load_pretrained(tmp_path / "out")
    assert type(model) is EfficientNetV2ForImageClassification
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    done = run(["classify", str(next((data / "red").iterdir())), "--model", str(tmp_path / "out"),
                "--format", "jsonl", "-j", "0", "--backend", "torch"])
    assert done.exit_code == 0, done.stderr
    assert _records(done.stdout)[0]["predictions"][0]["label"] in ("blue", "green", "red")


def test_converted_directory_reloads_bit_identically(v2_dir, photos, tmp_path):
    from effnet_cli.hub import load_pretrained

    directory, _ = v2_dir
    model, _ = load_pretrained(directory)
    model.save_pretrained(tmp_path / "again")
    again, _ = load_pretrained(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    pixels = _pixels(directory, photos[:2])
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, again(pixels).logits)


@pytest.mark.parametrize("devices", [None, pytest.param("cpu,cpu", marks=pytest.mark.slow)])  # workers: ~6 s
def test_sharded_embed_of_a_v2(v2_dir, photos, tmp_path, devices):
    directory, _ = v2_dir
    extra = ["--devices", devices] if devices else []
    done = run(["embed", *map(str, photos), "--model", str(directory), "--output-dir", str(tmp_path / "shards"),
                "-j", "0", "--backend", "torch", *extra])
    assert done.exit_code == 0, done.stderr
    arrays = [np.load(p) for p in sorted((tmp_path / "shards").glob("emb_*.npy"))]
    assert sum(len(a) for a in arrays) == len(photos) and all(a.shape[1] == 1280 for a in arrays)
