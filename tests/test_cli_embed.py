"""`effnet embed`: rows, manifest, per-file mode, stage features, normalisation, dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import effnet, run


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _api_features(directory: Path, image: Path, stage: int | None = None, pool: str = "mean") -> np.ndarray:
    from effnet_cli import EfficientNetModel, load_pretrained

    model, processor = load_pretrained(directory, model_class=EfficientNetModel)
    x = processor(Image.open(image).convert("RGB"))["pixel_values"]
    with torch.no_grad():
        fmap = model(x).last_hidden_state if stage is None else model.stage_output(x, stage - 1)
    return (fmap.amax(dim=(2, 3)) if pool == "max" else fmap.mean(dim=(2, 3)))[0].numpy()


def test_rows_follow_the_manifest_and_equal_the_api(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "zero.jpg"
    bad.write_bytes(b"")
    inputs = [str(photos[0]), str(bad), str(photos[1]), str(photos[2])]
    out = tmp_path / "feats.npy"
    res = run(["embed", *inputs, "-o", str(out), "--model", str(b0_dir), "-b", "2", "-j", "2"])
    assert res.exit_code == 1 and f"{bad}: empty file" in res.stderr
    array = np.load(out)
    records = _manifest(tmp_path / "feats.jsonl")
    assert [r["path"] for r in records] == inputs
    assert [r["row"] for r in records] == [0, None, 1, 2] and records[1]["error"] == "empty file"
    assert array.shape == (3, 1280) and array.dtype == np.float32
    for record in records:
        if record["row"] is not None:
            np.testing.assert_allclose(array[record["row"]], _api_features(b0_dir, Path(record["path"])),
                                       rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob("*.partial"))  # temporaries renamed into place


def test_per_file_mode_writes_the_same_numbers(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    run(["embed", str(photos[0]), str(photos[1]), "-o", str(tmp_path / "all.npy"), "--model", str(b0_dir)])
    out = tmp_path / "per"
    res = run(["embed", str(photos[0]), str(photos[1]), "--per-file", str(out), "--model", str(b0_dir)])
    assert res.exit_code == 0, res.stderr
    whole = np.load(tmp_path / "all.npy")
    records = _manifest(out / "manifest.jsonl")
    for i, record in enumerate(records):
        single = np.load(out / record["file"])
        assert record["file"].endswith(Path(record["path"]).name + ".npy")
        np.testing.assert_allclose(single, whole[i], rtol=1e-5, atol=1e-6)


def test_stage_features_pooling_and_normalize(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "s.npy"
    res = run(["embed", str(photos[3]), "-o", str(out), "--model", str(b0_dir), "--features", "stage:6",
               "--pool", "max"])
    assert res.exit_code == 0, res.stderr
    row = np.load(out)[0]
    assert row.shape == (192,)  # b0 stage 6 is 192 wide
    np.testing.assert_allclose(row, _api_features(b0_dir, photos[3], stage=6, pool="max"), rtol=1e-5, atol=1e-5)
    # A second run on the same file replaces it only when asked to (--overwrite).
    assert run(["embed", str(photos[3]), "-o", str(out), "--model", str(b0_dir), "--normalize"]).exit_code == 2
    assert run(["embed", str(photos[3]), "-o", str(out), "--model", str(b0_dir), "--normalize",
                "--overwrite"]).exit_code == 0
    assert np.linalg.norm(np.load(out)[0]) == pytest.approx(1.0, abs=1e-5)


def test_float16_halves_the_file(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    run(["embed", str(photos[0]), "-o", str(tmp_path / "a.npy"), "--model", str(b0_dir)])
    run(["embed", str(photos[0]), "-o", str(tmp_path / "h.npy"), "--model", str(b0_dir), "--dtype", "float16"])
    full, half = np.load(tmp_path / "a.npy"), np.load(tmp_path / "h.npy")
    assert half.dtype == np.float16 and full.dtype == np.float32
    np.testing.assert_allclose(half.astype(np.float32), full, rtol=2e-3, atol=2e-3)
    assert (tmp_path / "h.npy").stat().st_size < 0.6 * (tmp_path / "a.npy").stat().st_size


@pytest.mark.parametrize("args,message", [
    (["--features", "stage:9"], "stage"),
    (["--features", "layer4"], "stage:N"),
    (["--pool", "median"], "pool"),
])
def test_bad_options_are_usage_errors(b0_dir: Path, photos: list[Path], tmp_path: Path, args, message) -> None:
    res = run(["embed", str(photos[0]), "-o", str(tmp_path / "x.npy"), "--model", str(b0_dir), *args])
    assert res.exit_code == 2 and message in res.stderr


def test_output_must_be_given_once(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    res = run(["embed", str(photos[0]), "--model", str(b0_dir)])
    assert res.exit_code == 2 and "-o" in res.stderr


def test_subprocess_run_reads_back_with_numpy(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "f.npy"
    proc = effnet("embed", *map(str, photos), "-o", str(out), "--model", str(b0_dir))
    assert proc.returncode == 0, proc.stderr.decode()
    assert np.load(out).shape == (len(photos), 1280)
    assert len(_manifest(out.with_suffix(".jsonl"))) == len(photos)
