"""``--backend`` with sharded runs: device workers and partitions run the backend asked for, and record it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet_cli.scale.shards import read_embeddings
from tests.cli_helpers import effnet, run

RUNTIMES = [name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name) is not None]


def _images(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(directory / f"img{i}.png")


def _backends_recorded(directory: Path) -> set[str]:
    return {json.loads(p.read_text())["settings"]["backend"] for p in directory.glob("_done_*.json")}


@pytest.fixture(scope="module")
def reference(b0_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list]:
    """Six images and their embeddings from one PyTorch process."""
    root = tmp_path_factory.mktemp("scale-backends")
    _images(root / "imgs", 6)
    out = root / "torch"
    res = run(["embed", str(root / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "0", "--shard-size", "3",
               "--backend", "torch", "--output-dir", str(out)])
    assert res.exit_code == 0, res.stderr
    array, records = read_embeddings(out)
    return root / "imgs", array, records


@pytest.mark.slow
@pytest.mark.parametrize("backend", RUNTIMES)
def test_device_workers_run_the_backend_asked_for(backend: str, b0_small_dir: Path, reference, tmp_path: Path) -> None:
    images, expected, records = reference
    out = tmp_path / "two"
    common = ["embed", str(images), "--model", str(b0_small_dir), "-b", "2", "-j", "0", "--shard-size", "3",
              "--output-dir", str(out)]
    res = effnet(*common, "--devices", "cpu:2", "--backend", backend)
    assert res.returncode == 0, res.stderr.decode()
    array, got = read_embeddings(out)
    assert got == records
    np.testing.assert_allclose(array, expected, rtol=0, atol=1e-4)
    assert _backends_recorded(out) == {backend}
    other = run([*common, "--devices", "cpu:2", "--backend", "torch", "--resume"])
    assert other.exit_code == 2 and f'backend="{backend}" there, "torch" now' in other.stderr, other.stderr


@pytest.mark.parametrize("backend", RUNTIMES)
def test_partitions_run_the_backend_asked_for(backend: str, b0_small_dir: Path, reference, tmp_path: Path) -> None:
    images, expected, records = reference
    out = tmp_path / "parts"
    common = ["embed", str(images), "--model", str(b0_small_dir), "-b", "2", "-j", "0", "--shard-size", "3",
              "--output-dir", str(out), "--backend", backend]
    for part in ("0/2", "1/2"):
        res = run([*common, "--shard", part])
        assert res.exit_code == 0, res.stderr
    array, got = read_embeddings(out)
    assert sorted(got, key=lambda r: r["index"]) == records
    order = np.argsort([r["index"] for r in got])
    np.testing.assert_allclose(array[order], expected, rtol=0, atol=1e-4)
    assert _backends_recorded(out) == {backend}
    other = run([*common[:-1], "torch", "--shard", "0/2", "--resume"])
    assert other.exit_code == 2 and f'backend="{backend}" there, "torch" now' in other.stderr, other.stderr


@pytest.mark.parametrize("backend", RUNTIMES)
def test_devices_classify_records_the_backend(backend: str, b0_small_dir: Path, reference, tmp_path: Path) -> None:
    images, _, _ = reference
    out = tmp_path / "preds"
    res = run(["classify", str(images), "--model", str(b0_small_dir), "-j", "0", "--devices", "cpu",
               "--backend", backend, "--output-dir", str(out)])
    assert res.exit_code == 0, res.stderr
    assert _backends_recorded(out) == {backend}
