"""effnet index / search / dedupe and effnet_cli.Index: incremental updates, kills, bad inputs, quality."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from tests.cli_helpers import run
from tests.conftest import PHOTOS


def altered_copies(photo: Path, out: Path) -> list[Path]:
    """Re-encoded, resized, cropped and brightened copies of ``photo`` (the near-duplicates a library has)."""
    im = Image.open(photo).convert("RGB")
    w, h = im.size
    made = {"reencoded": (im, 40), "resized": (im.resize((w // 2, h // 2)), 85),
            "cropped": (im.crop((w // 20, h // 20, w - w // 20, h - h // 20)), 90),
            "brighter": (ImageEnhance.Brightness(im).enhance(1.3), 90)}
    paths = []
    for name, (image, quality) in made.items():
        path = out / f"{photo.stem}_{name}.jpg"
        image.save(path, quality=quality)
        paths.append(path)
    return paths


@pytest.fixture
def library(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, folder / photo.name)
    return folder


def _index(folder: Path, index: Path, model: Path | None, *extra: str):
    """`effnet index`; model None: the bundled lite0, whose features mean something (random weights' do not)."""
    chosen = [] if model is None else ["--model", str(model)]
    backend = [] if "--backend" in extra else ["--backend", "torch"]
    return run(["index", str(folder), "-o", str(index), *chosen, *backend, "-j", "0", *extra])


def _embedded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record which files the index run embeds."""
    from effnet_cli.similar import build

    seen: list[str] = []
    real = build.embed_images

    def spy(engine, paths, *args, **kwargs):
        seen.extend(os.path.basename(p) for p in paths)
        return real(engine, paths, *args, **kwargs)

    monkeypatch.setattr(build, "embed_images", spy)
    return seen


def test_reindex_embeds_only_changed_files_and_search_follows(library: Path, tmp_path: Path, 
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "idx"
    first = _index(library, index, None)
    assert first.exit_code == 0, first.stderr
    assert "added 5, updated 0, removed 0, kept 0" in first.stderr
    seen = _embedded(monkeypatch)
    (library / "espresso.jpg").unlink()
    Image.open(library / "cat.jpg").resize((100, 80)).save(library / "cat.jpg")  # changed in place
    shutil.copy(PHOTOS[0], library / "copy.jpg")
    again = _index(library, index, None)
    assert again.exit_code == 0, again.stderr
    assert sorted(seen) == ["cat.jpg", "copy.jpg"]  # nothing else was read again
    assert "added 1, updated 1, removed 1, kept 3" in again.stderr
    seen.clear()
    generation = json.loads((index / "index.json").read_text())["generation"]
    assert "added 0, updated 0, removed 0, kept 5" in _index(library, index, None).stderr
    assert seen == []
    assert json.loads((index / "index.json").read_text())["generation"] == generation  # not rewritten
    found = run(["search", str(library / PHOTOS[0].name), "--index", str(index), "-k", "10", "--format", "jsonl"])
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert found.exit_code == 0, found.stderr
    assert hits[0]["path"].endswith("copy.jpg") and hits[0]["score"] > 0.999  # the new identical copy, first
    assert not any(h["path"].endswith("espresso.jpg") for h in hits)  # the deleted file is gone
    assert len(hits) == 4  # the query itself is not its own neighbour


def test_other_settings_refused_in_one_line(library: Path, tmp_path: Path, b0_small_dir: Path) -> None:
    index = tmp_path / "idx"
    assert _index(library, index, b0_small_dir).exit_code == 0
    before = {p.name: p.read_bytes() for p in index.iterdir() if not p.name.startswith(".")}
    other = _index(library, index, b0_small_dir, "--dtype", "float16")
    assert other.exit_code == 2
    assert other.stderr.count("\n") == 1 and "other settings" in other.stderr and "dtype" in other.stderr
    assert "Traceback" not in other.stderr
    assert {p.name: p.read_bytes() for p in index.iterdir() if not p.name.startswith(".")} == before


def test_bad_inputs_one_line_and_nothing_overwritten(library: Path, tmp_path: Path, b0_small_dir: Path) -> None:
    index = tmp_path / "idx"
    assert _index(library, index, b0_small_dir).exit_code == 0
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    bad_query = run(["search", str(text), str(library / "cat.jpg"), "--index", str(index), "--format", "jsonl"])
    assert bad_query.exit_code == 1
    records = [json.loads(line) for line in bad_query.stdout.splitlines()]
    assert records[0]["query"] == str(text) and "error" in records[0] and len(records) == 1 + 4
    not_index = run(["search", str(library / "cat.jpg"), "--index", str(library)])
    assert not_index.exit_code == 2 and "is not an effnet index" in not_index.stderr
    assert not_index.stderr.count("\n") == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    refused = _index(library, mine, b0_small_dir)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert sorted(os.listdir(mine)) == ["keep.txt"] and (mine / "keep.txt").read_text() == "mine"
    both = run(["dedupe", str(library), "--index", str(index)])
    assert both.exit_code == 2 and both.stderr.count("\n") == 1
    threshold = run(["dedupe", "--index", str(index), "--threshold", "2"])
    assert threshold.exit_code == 2 and "between 0 and 1" in threshold.stderr
    refit = run(["dedupe", "--index", str(index), "--features", "head"])
    assert refit.exit_code == 2 and "--features is chosen when the index is built" in refit.stderr
    runtime = _index(library, tmp_path / "other", b0_small_dir, "--backend", "onnxruntime")
    assert runtime.exit_code == 2 and "--features layout runs the PyTorch model" in runtime.stderr
    assert not (tmp_path / "other" / "index.json").exists()


def test_dedupe_paths_never_deletes(library: Path, tmp_path: Path) -> None:
    shutil.copy(library / "cat.jpg", library / "cat copy.jpg")
    cat = Image.open(library / "cat.jpg")
    cat.resize((cat.width // 2, cat.height // 2)).save(library / "cat_small.jpg", quality=80)
    index = tmp_path / "idx"
    assert _index(library, index, None).exit_code == 0
    before = sorted(os.listdir(library))
    out = run(["dedupe", "--index", str(index), "--format", "paths", "-0"])
    assert out.exit_code == 0, out.stderr
    removable = [p for p in out.stdout.split("\0") if p]
    names = sorted(os.path.basename(p) for p in removable)
    assert len(names) == 2 and "cat_small.jpg" in names  # keeps one of the two largest (equal: the first)
    assert sorted(os.listdir(library)) == before
    groups = run(["dedupe", "--index", str(index), "--format", "jsonl", "--keep", "first"])
    members = [json.loads(line) for line in groups.stdout.splitlines()]
    assert {m["group"] for m in members} == {1} and sum(m["keep"] for m in members) == 1


def test_killed_index_run_leaves_a_usable_index_and_a_rerun_finishes(library: Path, tmp_path: Path,
                                                                     b0_small_dir: Path) -> None:
    index = tmp_path / "idx"
    assert _index(library, index, b0_small_dir).exit_code == 0
    more = tmp_path / "more"
    more.mkdir()
    for i in range(40):
        Image.open(PHOTOS[i % len(PHOTOS)]).rotate(i * 9).save(more / f"r{i:02d}.jpg")
    cmd = [sys.executable, "-m", "effnet_cli", "index", str(library), str(more), "-o", str(index), "--model",
           str(b0_small_dir), "--backend", "torch", "-j", "0", "-b", "1", "--checkpoint", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if json.loads((index / "index.json").read_text())["count"] > 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    from effnet_cli.similar.store import read_index

    partial = read_index(index)  # the last committed generation, whole
    assert 5 < len(partial) < 45
    assert run(["search", str(library / "cat.jpg"), "--index", str(index), "--format", "jsonl"]).exit_code == 0
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"added {45 - len(partial)}, updated 0, removed 0, kept {len(partial)}" in rerun.stderr
    assert len(read_index(index)) == 45
    assert sorted(n for n in os.listdir(index) if n.endswith(".npy")) == [f"vectors-{read_index(index).generation}.npy"]


def test_python_api_build_add_remove_search_dedupe(library: Path, tmp_path: Path) -> None:
    from effnet_cli import Index

    index = Index.build([library], tmp_path / "idx")
    assert len(index) == 5 and index.last_update.added == 5
    shutil.copy(library / "rocket.jpg", library / "rocket2.jpg")
    assert index.add([library]).added == 1
    [result] = index.search([library / "rocket.jpg"], k=1)
    assert result.hits[0].path.endswith("rocket2.jpg")
    [group] = index.dedupe(threshold=0.999)
    assert sorted(os.path.basename(m.path) for m in group.members) == ["rocket.jpg", "rocket2.jpg"]
    assert index.remove([library / "rocket2.jpg"]) == 1 and len(index) == 5
    assert (library / "rocket2.jpg").exists()  # removed from the index, never from the disk
    assert Index(tmp_path / "idx").paths == index.paths
    assert _index(library, tmp_path / "cli", None).exit_code == 0  # the command line and the API agree on settings
    (library / "rocket2.jpg").unlink()
    assert Index(tmp_path / "cli").add([library]).removed == 1
    assert "kept 5" in _index(library, tmp_path / "idx", None).stderr


def test_lite0_dedupe_and_search_quality(tmp_path: Path) -> None:
    """Real lite0 weights: altered copies of each photo group with it and nothing else; nearest other is its own."""
    folder = tmp_path / "set"
    folder.mkdir()
    truth = {}
    for photo in PHOTOS:
        shutil.copy(photo, folder / photo.name)
        truth[photo.name] = photo.stem
        for copy in altered_copies(photo, folder):
            truth[copy.name] = photo.stem
    index = tmp_path / "idx"
    built = run(["index", str(folder), "-o", str(index), "--backend", "torch", "-j", "0"])
    assert built.exit_code == 0, built.stderr
    groups = run(["dedupe", "--index", str(index), "--format", "jsonl"])
    members = [json.loads(line) for line in groups.stdout.splitlines()]
    by_group: dict[int, list[str]] = {}
    for m in members:
        by_group.setdefault(m["group"], []).append(os.path.basename(m["path"]))
    predicted = {frozenset(p) for names in by_group.values() for p in itertools.combinations(names, 2)}
    actual = {frozenset(p) for p in itertools.combinations(truth, 2) if truth[min(p)] == truth[max(p)]}
    precision = len(predicted & actual) / len(predicted)
    recall = len(predicted & actual) / len(actual)
    assert precision == 1.0  # no group mixes two photos
    assert 2 * precision * recall / (precision + recall) >= 0.9, (precision, recall)
    found = run(["search", *[str(folder / n) for n in truth], "--index", str(index), "-k", "1", "--format", "jsonl"])
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    right = sum(truth[os.path.basename(h["query"])] == truth[os.path.basename(h["path"])] for h in hits)
    assert right == len(truth)


def test_hash_keeps_a_touched_file_and_reembeds_a_changed_one(library: Path, tmp_path: Path, b0_small_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "idx"
    assert _index(library, index, b0_small_dir, "--hash").exit_code == 0
    seen = _embedded(monkeypatch)
    os.utime(library / "cat.jpg", ns=(1, 1))  # same bytes, another time
    (library / "rocket.jpg").write_bytes((library / "espresso.jpg").read_bytes())  # other bytes
    again = _index(library, index, b0_small_dir, "--hash")
    assert again.exit_code == 0, again.stderr
    assert seen == ["rocket.jpg"]
    assert "added 0, updated 1, removed 0, kept 4" in again.stderr


def test_a_first_run_killed_before_its_first_commit_is_continued(library: Path, tmp_path: Path,
                                                                 b0_small_dir: Path) -> None:
    index = tmp_path / "idx"
    index.mkdir()
    (index / "vectors-1.npy").write_bytes(b"half written")  # what a kill before the first commit leaves
    done = _index(library, index, b0_small_dir)
    assert done.exit_code == 0, done.stderr
    assert "added 5" in done.stderr
    assert sorted(os.listdir(index)) == ["index.json", "manifest-1.jsonl", "vectors-1.npy"]
