"""``effnet explain``: heatmaps that point at the photo, files at the input's size, a record per input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run

IMAGES = Path(__file__).parent / "data" / "images"
needs_cam = pytest.mark.skipif(importlib.util.find_spec("pytorch_grad_cam") is None,
                               reason="pytorch-grad-cam is not installed (pip install 'effnet-cli[explain]')")


def _on_grey(photo: str, side: str, size: tuple[int, int] = (448, 448)) -> Image.Image:
    """``photo`` squeezed into one half (left or right) of a flat grey canvas."""
    canvas = Image.new("RGB", size, (128, 128, 128))
    half = (size[0] // 2, size[1])
    pasted = Image.open(IMAGES / photo).convert("RGB").resize(half)
    canvas.paste(pasted, (0 if side == "left" else half[0], 0))
    return canvas


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of the bundled lite0 with the default method over photos on grey, an odd name and a bad file."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        pytest.skip("pytorch-grad-cam is not installed (pip install 'effnet-cli[explain]')")
    inputs = tmp_path_factory.mktemp("inputs")
    paths = []
    for photo in ("cat.jpg",):
        for side in ("left", "right"):
            path = inputs / f"{Path(photo).stem}_{side}.png"
            _on_grey(photo, side).save(path)
            paths.append(path)
    odd = inputs / "wide photo [1] #2.jpg"  # not square: the crop cuts the sides, the map must still be W×H
    Image.open(IMAGES / "rocket.jpg").convert("RGB").resize((301, 173)).save(odd)
    bad = inputs / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("out") / "heat"
    result = run(["explain", *map(str, paths), str(odd), str(bad), "-o", str(out), "--top", "2", "-q"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    return {"result": result, "records": records, "paths": paths, "odd": odd, "bad": bad, "out": out}


def _mass_on_side(heatmap: np.ndarray, side: str) -> float:
    half = heatmap.shape[1] // 2
    left = float(heatmap[:, :half].sum())
    return (left if side == "left" else float(heatmap.sum()) - left) / float(heatmap.sum())


@needs_cam
@pytest.mark.parametrize("stem", ["cat_left", "cat_right"])
def test_heatmap_mass_is_on_the_photo_half(explained: dict, stem: str) -> None:
    record = next(r for r in explained["records"] if Path(r["path"]).stem == stem)
    assert record["method"] == "gradcam"  # the default
    heatmap = np.load(record["explained"][0]["heatmap"])
    share = _mass_on_side(heatmap, stem.split("_")[1])
    assert share >= 0.75, f"{stem}: only {share:.1%} of the heatmap on the photo's half"


@needs_cam
@pytest.mark.slow
def test_heatmap_mass_is_on_the_photo_half_for_other_photos(tmp_path: Path) -> None:
    paths = []
    for photo in ("cameraman.jpg", "rocket.jpg", "espresso.jpg"):
        for side in ("left", "right"):
            paths.append(tmp_path / f"{Path(photo).stem}_{side}.png")
            _on_grey(photo, side).save(paths[-1])
    result = run(["explain", *map(str, paths), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.stderr
    for record in map(json.loads, result.stdout.splitlines()):
        share = _mass_on_side(np.load(record["explained"][0]["heatmap"]), Path(record["path"]).stem.split("_")[1])
        assert share >= 0.75, f"{record['path']}: only {share:.1%} of the heatmap on the photo's half"


@needs_cam
def test_files_have_the_input_size(explained: dict) -> None:
    for record in explained["records"]:
        if "error" in record:
            continue
        width, height = Image.open(record["path"]).size
        assert len(record["explained"]) == 2  # --top 2
        for entry in record["explained"]:
            heatmap = np.load(entry["heatmap"])
            assert heatmap.shape == (height, width) and heatmap.dtype == np.float32
            assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0 and heatmap.max() > 0.5
            assert Image.open(entry["overlay"]).size == (width, height)
            assert Path(entry["overlay"]).is_relative_to(explained["out"])


@needs_cam
def test_every_input_has_a_record_in_order(explained: dict) -> None:
    result, records = explained["result"], explained["records"]
    assert result.exit_code == 1  # one input failed
    names = [*map(str, explained["paths"]), str(explained["odd"]), str(explained["bad"])]
    assert [r["path"] for r in records] == names
    assert "not an image" in records[-1]["error"] and "explained" not in records[-1]
    for record in records[:-1]:
        top = record["predictions"]
        assert [e["index"] for e in record["explained"]] == [p["index"] for p in top[:2]]
        assert all(p["label"] for p in top)


@needs_cam
def test_class_option_and_refusals(explained: dict, tmp_path: Path) -> None:
    cat = str(explained["paths"][0])
    again = run(["explain", cat, "-o", str(explained["out"]), "-q"])
    assert again.exit_code == 2 and "already exists" in again.stderr  # nothing replaced without --overwrite
    unknown = run(["explain", cat, "-o", str(tmp_path / "a"), "--class", "no such label"])
    assert unknown.exit_code == 2 and "--class" in unknown.stderr
    method = run(["explain", cat, "-o", str(tmp_path / "b"), "--method", "magic"])
    assert method.exit_code == 2 and "--method must be one of" in method.stderr
    chosen = run(["explain", cat, "-o", str(tmp_path / "c"), "--class", "TIGER CAT", "--class", "285", "-q"])
    assert chosen.exit_code == 0, chosen.stderr
    assert [e["index"] for e in json.loads(chosen.stdout)["explained"]] == [282, 285]


def test_missing_library_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytorch_grad_cam" else real(name, *a))
    result = run(["explain", str(IMAGES / "cat.jpg"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "pip install 'effnet-cli[explain]'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_heatmap_goes_back_where_the_crop_came_from() -> None:
    from effnet_cli.core.processor import EfficientNetImageProcessor
    from effnet_cli.explain.cam import to_image_size

    processor = EfficientNetImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                           do_center_crop=True)
    full = to_image_size(np.ones((224, 224), np.float32), processor, 256, 512)  # resized as is, crop in the middle
    assert full.shape == (256, 512)
    assert full[:, :144].max() == 0.0 and full[:, 368:].max() == 0.0  # cut away: the model saw nothing there
    assert full[16:240, 144:368].min() == 1.0


@needs_cam
@pytest.mark.parametrize("method", ["gradcam++", "eigencam"])
def test_any_model_and_method_gives_maps_at_the_input_size(b0_small_dir: Path, tmp_path: Path, method: str) -> None:
    photo = tmp_path / "tall.png"
    Image.open(IMAGES / "espresso.jpg").convert("RGB").resize((90, 130)).save(photo)
    result = run(["explain", str(photo), "-o", str(tmp_path / "out"), "--model", str(b0_small_dir),
                  "--method", method, "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr
    (record,) = map(json.loads, result.stdout.splitlines())
    assert record["method"] == method
    heatmap = np.load(record["explained"][0]["heatmap"])
    assert heatmap.shape == (130, 90) and heatmap.dtype == np.float32 and 0 <= heatmap.min() <= heatmap.max() <= 1
    assert Image.open(record["explained"][0]["overlay"]).size == (90, 130)
