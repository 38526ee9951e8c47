"""timm hub repositories offline: `--variant v2-*` and `--model timm/<arch>.<tag>` from a hub cache laid out here.

Each repository is what the hub holds for timm (config.json with ``architecture`` and
``pretrained_cfg``, model.safetensors) with seeded weights, placed in a temporary
HF_HOME as huggingface_hub's cache does; HF_HUB_OFFLINE=1 keeps the network out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from effnet_cli.core.model import EfficientNetForImageClassification
from effnet_cli.core.model_v2 import EfficientNetV2ForImageClassification
from tests.cli_helpers import run
from tests.test_convert import randomize, save_safetensors
from tests.test_hub import _hub_cache

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")


def _timm_repo(root: Path, name: str, seed: int) -> tuple[Path, torch.nn.Module]:
    """A timm hub repository's files for ``name`` (``arch.tag``), and the timm model they hold."""
    arch, _, tag = name.partition(".")
    model = randomize(timm.create_model(arch, pretrained=False), seed=seed)
    with torch.no_grad():  # halved batch-norm scales: deep nets stay well conditioned in float32
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.mul_(0.5)
    files = root / name
    files.mkdir(parents=True)
    save_safetensors(model, files / "model.safetensors")
    pretrained = timm.models.get_pretrained_cfg(name).to_dict()
    (files / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 1000, "num_features": 1280,
                                                   "pretrained_cfg": {**pretrained, "tag": tag}}))
    return files, model.eval()


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> tuple[Path, dict[str, torch.nn.Module]]:
    home = tmp_path_factory.mktemp("hf-home")
    models = {}
    for name, seed in (("tf_efficientnetv2_s.in21k_ft_in1k", 31), ("efficientnetv2_rw_t.ra2_in1k", 32),
                       ("efficientnet_b0.ra_in1k", 33)):
        files, models[name] = _timm_repo(tmp_path_factory.mktemp("src"), name, seed)
        _hub_cache(home, files, repo=f"timm/{name}")
    return home, models


def _use_cache(home: Path, monkeypatch) -> None:
    # huggingface_hub reads its environment once, at import: set its constants as well.
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture()
def offline(hub_home, monkeypatch):
    _use_cache(hub_home[0], monkeypatch)
    return hub_home[1]


def test_variant_v2_s_classifies_with_timms_preprocessing(offline, photos):
    from PIL import Image

    source = offline["tf_efficientnetv2_s.in21k_ft_in1k"]
    done = run(["classify", *map(str, photos), "--variant", "v2-s", "--format", "jsonl", "--top-k", "1",
                "-j", "0", "--exact-decode", "--backend", "torch"])
    assert done.exit_code == 0, done.stderr
    ours = [json.loads(line)["predictions"][0] for line in done.stdout.splitlines()]
    # timm's own eval transform for this model (300 px, crop_pct 1.0, bicubic, mean/std 0.5), then timm's model.
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=source))
    with torch.no_grad():
        theirs = torch.softmax(source(torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])), -1)
    assert [p["index"] for p in ours] == theirs.argmax(-1).tolist()
    assert [p["score"] for p in ours] == pytest.approx(theirs.max(-1).values.tolist(), abs=2e-3)


@pytest.mark.parametrize(("name", "model_class", "padding"), [
    ("efficientnetv2_rw_t.ra2_in1k", EfficientNetV2ForImageClassification, "symmetric"),
    ("efficientnet_b0.ra_in1k", EfficientNetForImageClassification, "symmetric"),
])
def test_model_timm_repo_loads_and_is_converted_once(offline, name, model_class, padding):
    from effnet_cli.hub import load_pretrained

    model, processor = load_pretrained(f"timm/{name}")
    assert type(model) is model_class and model.config.padding_mode == padding
    assert model.source["converted_from"] == "timm" and model.source["repo_id"] == f"timm/{name}"
    x = torch.randn(1, 3, 97, 97, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = offline[name](x)
        assert ((model(x).logits - theirs).abs().max() / theirs.abs().max()) < 1e-4
    # timm's pretrained config: its crop_pct and interpolation.
    cfg = timm.models.get_pretrained_cfg(name)
    assert processor.crop_size["height"] == cfg.input_size[-1] and processor.resample == 3
    converted = Path(model.source["path"])
    written = (converted / "model.safetensors").stat().st_mtime_ns
    again, _ = load_pretrained(f"timm/{name}")
    assert Path(again.source["path"]) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == written  # cached, not converted again


def test_a_timm_repo_of_another_family_is_refused(hub_home, tmp_path, monkeypatch):
    from effnet_cli.errors import LoadError
    from effnet_cli.hub import load_pretrained

    files = tmp_path / "src"
    files.mkdir()
    (files / "config.json").write_text(json.dumps({"architecture": "resnet50", "pretrained_cfg": {}}))
    from safetensors.torch import save_file

    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(files / "model.safetensors"))
    home = tmp_path / "home"
    _hub_cache(home, files, repo="timm/resnet50.a1_in1k")
    _use_cache(home, monkeypatch)
    with pytest.raises(LoadError, match="resnet50 is not an EfficientNet"):
        load_pretrained("timm/resnet50.a1_in1k")
