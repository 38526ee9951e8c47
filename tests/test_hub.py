"""Loading weights: local directories, a real hub cache layout offline, safe tensor reading."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetModel, load_pretrained
from effnet_cli.errors import OfflineError, UnsafeCheckpointError, WeightsError
from effnet_cli.hub import read_state_dict, save_pretrained
from tests.conftest import randomize


COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_PREPROCESSOR = {
    "crop_size": {"height": 289, "width": 289}, "do_center_crop": False, "do_normalize": True, "do_rescale": True,
    "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "EfficientNetImageProcessor",
    "image_std": [0.47853944, 0.4732864, 0.47434163], "include_top": True, "resample": 0,
    "rescale_factor": 0.00392156862745098, "rescale_offset": False, "size": {"height": 224, "width": 224},
}


@pytest.fixture(scope="module")
def reference_b0(tmp_path_factory: pytest.TempPathFactory):
    """A transformers b0 with seeded random weights, saved by transformers' own save_pretrained."""
    transformers = pytest.importorskip("transformers")  # only the tests that compare with it need it
    config = EfficientNetConfig.from_variant("b0")
    hf = transformers.EfficientNetForImageClassification(transformers.EfficientNetConfig.from_dict(config.to_dict()))
    ours = randomize(EfficientNetForImageClassification(config), seed=21)
    hf.load_state_dict(ours.state_dict())
    hf.eval()
    directory = tmp_path_factory.mktemp("hf-b0")
    hf.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR))
    return hf, directory


def _hub_cache(root: Path, source: Path, repo: str = "google/efficientnet-b0") -> Path:
    """Lay ``source``'s files out as huggingface_hub's cache does: blobs, a snapshot of symlinks, refs/main."""
    repo_dir = root / "hub" / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(source.iterdir())):
        blob = repo_dir / "blobs" / f"{i:040d}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return root


def test_local_directory_saved_by_transformers_loads_with_its_logits(reference_b0) -> None:
    hf, directory = reference_b0
    model, processor = load_pretrained(directory)
    assert not model.training and model.config.id2label[281] == "tabby, tabby cat"
    assert processor.to_dict()["resample"] == 0 and processor.include_top
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, rtol=1e-4, atol=1e-5)


def test_offline_hub_cache_loads_b0_with_transformers_logits(reference_b0, tmp_path: Path) -> None:
    hf, directory = reference_b0
    home = _hub_cache(tmp_path / "hf-home", directory)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        "from effnet_cli import load_pretrained\n"
        "model, processor = load_pretrained('b0')\n"
        "x = torch.load(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    torch.save(model(x).logits, sys.argv[2])\n"
        "print(model.source['repo_id'], model.source['revision'])\n"
    )
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["google/efficientnet-b0", COMMIT]  # the revision used is reported
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), hf(x).logits, rtol=1e-4, atol=1e-5)


def test_offline_without_cache_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(OfflineError, match=r"google/efficientnet-b5.*not in the local Hugging Face cache"):
        load_pretrained("b5")


def test_pytorch_model_bin_is_read_with_weights_only(reference_b0, tmp_path: Path) -> None:
    hf, directory = reference_b0
    target = tmp_path / "bin"
    target.mkdir()
    shutil.copy(directory / "config.json", target)
    torch.save(hf.state_dict(), target / "pytorch_model.bin")
    model, _ = load_pretrained(target)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, rtol=1e-4, atol=1e-5)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_that_carries_code_is_refused_before_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "pytorch_model.bin"
    with open(bad, "wb") as fh:
        pickle.dump({"weight": _RunsCode()}, fh)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_state_dict(bad)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_truncated_safetensors_is_one_clear_error(reference_b0, tmp_path: Path) -> None:
    _, directory = reference_b0
    target = tmp_path / "cut"
    target.mkdir()
    shutil.copy(directory / "config.json", target)
    data = (directory / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_pretrained(target)


def test_mis_shaped_missing_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    config = EfficientNetConfig.from_variant("b0", num_labels=10)
    model = EfficientNetForImageClassification(config)
    save_pretrained(model, tmp_path)
    wrong = EfficientNetConfig.from_variant("b0", num_labels=12)
    wrong.to_json_file(tmp_path / "config.json")
    with pytest.raises(WeightsError, match=r"mis-shaped tensor\(s\): classifier.bias \(10,\)"):
        load_pretrained(tmp_path)
    sd = {k: v for k, v in model.state_dict().items() if "top_bn" not in k}
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing tensor.*top_bn.*unexpected tensor.*extra.weight"):
        from effnet_cli.hub import load_weights

        load_weights(EfficientNetForImageClassification(config), sd)


def test_base_model_and_classifier_checkpoints_cross_load(tmp_path: Path) -> None:
    config = EfficientNetConfig.from_variant("b0", num_labels=4)
    clf = randomize(EfficientNetForImageClassification(config), seed=9).eval()
    save_pretrained(clf, tmp_path)
    base, _ = load_pretrained(tmp_path, model_class=EfficientNetModel)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(base(x).pooler_output, clf.efficientnet(x).pooler_output)


def test_wrong_config_values_in_a_checkpoint_are_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"width_coefficient": "wide"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="width_coefficient must be a number"):
        load_pretrained(tmp_path)


def test_unknown_names_are_clear(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="neither a directory"):
        load_pretrained("not-a-model")
    with pytest.raises(WeightsError, match="No pretrained lite3 weights"):
        load_pretrained("lite3")


# ------------------------------------------------------------ no network
def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: connections are refused


@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_no_network_fails_fast_with_one_line_naming_the_fix(server: str, tmp_path: Path) -> None:
    import socket
    import time

    from tests.cli_helpers import effnet
    from tests.conftest import IMAGES

    silent = socket.socket()  # accepts connections into its backlog and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1] if server == "silent" else _closed_port()
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": ""}
    try:
        started = time.monotonic()
        proc = effnet("classify", str(IMAGES / "cat.jpg"), "--variant", "b7", "-q", env=env, timeout=120)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and proc.stdout == b""
    assert len(lines) == 1, lines  # no retry logs, no progress bar
    assert lines[0].startswith("effnet: google/efficientnet-b7 is not in the local Hugging Face cache")
    for fix in ("HF_HUB_OFFLINE=1", "hf download google/efficientnet-b7", "--model DIR"):
        assert fix in lines[0]
    # A generous bound for a loaded machine: the probe gives up after 2.5 s; huggingface_hub's retries took 26 s.
    assert elapsed < 15, elapsed


def test_unreachable_hub_falls_back_to_the_cache(reference_b0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    _, directory = reference_b0
    home = _hub_cache(tmp_path / "hf-home", directory)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    model, _ = load_pretrained("b0")
    assert model.source == {"source": "hub", "repo_id": "google/efficientnet-b0", "revision": COMMIT}


def test_hub_files_come_from_one_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository with a pickle: the second request is pinned to the commit the first one resolved."""
    import huggingface_hub

    from effnet_cli.weights import probe

    config = EfficientNetConfig.from_variant("b0", num_labels=3)
    calls = []

    def fake_snapshot_download(repo_id, *, revision, allow_patterns, **kwargs):
        calls.append((revision, tuple(allow_patterns)))
        folder = tmp_path / "snapshots" / COMMIT
        folder.mkdir(parents=True, exist_ok=True)
        if "config.json" in allow_patterns:
            config.to_json_file(folder / "config.json")
        if "pytorch_model.bin" in allow_patterns:
            torch.save(EfficientNetForImageClassification(config).state_dict(), folder / "pytorch_model.bin")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(probe, "unreachable", lambda endpoint: None)
    model, _ = load_pretrained("google/efficientnet-b0", revision="main")
    assert calls == [("main", ("config.json", "preprocessor_config.json", "model.safetensors")),
                     (COMMIT, ("pytorch_model.bin",))]
    assert model.source["revision"] == COMMIT and model.config.num_labels == 3
