"""The approximate index of a large `effnet index`: built, kept in step, refused when stale, equal to exact."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run
from tests.conftest import PHOTOS
from tests.test_similar import _index, altered_copies, library  # noqa: F401 - the fixture

faiss = pytest.importorskip("faiss")


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20, dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_approximate_search_equals_exact_on_small_data() -> None:
    from effnet_cli.similar.ann import build_ann, search_ann
    from effnet_cli.similar.search import top_k

    vectors = _clustered(3000, 96, 0)
    queries = vectors[:40] * 0.6 + _clustered(40, 96, 1) * 0.4
    index = build_ann(vectors)
    assert index.ntotal == 3000 and index.nlist > 1  # really an inverted file, not one list scanned whole
    own = [None] * 20 + list(range(20, 40))  # half the queries are indexed rows, which must not find themselves
    rows, scores = search_ann(index, vectors, queries, 5, own)
    exact_rows, exact_scores = top_k(vectors, queries, 5, own)
    assert (rows == exact_rows).all()
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)
    assert all(own[i] not in rows[i] for i in range(40))


def test_dedupe_groups_from_neighbours_equal_all_pairs_groups() -> None:
    from effnet_cli.similar.ann import build_ann
    from effnet_cli.similar.groups import find_groups
    from effnet_cli.similar.search import normalise
    from effnet_cli.similar.store import Entry

    rng = np.random.default_rng(2)
    pictures = _clustered(400, 64, 3)
    copies = [pictures]
    for strength in (0.05, 0.1, 0.2):  # altered copies of the first 150 pictures, at three strengths
        copies.append(normalise(pictures[:150] + strength * rng.standard_normal((150, 64)).astype(np.float32)))
    vectors = np.concatenate(copies)
    entries = [Entry(f"/p/{i}.jpg", 1000 + i % 7, i) for i in range(len(vectors))]
    exact = find_groups(vectors, entries, threshold=0.9)
    near = find_groups(vectors, entries, threshold=0.9, approximate=build_ann(vectors))
    assert len(exact) > 100 and max(len(g.members) for g in exact) >= 3  # many groups, some of several copies
    assert [[m.path for m in g.members] for g in near] == [[m.path for m in g.members] for g in exact]
    assert [g.keep for g in near] == [g.keep for g in exact]


@pytest.fixture
def altered(library: Path) -> Path:
    for photo in PHOTOS:
        altered_copies(photo, library)
    return library  # 25 images: each sample photo and four altered copies


def _search(folder: Path, index: Path) -> tuple[list[dict], str]:
    found = run(["search", str(folder), "--index", str(index), "-k", "3", "--format", "jsonl"])
    assert found.exit_code == 0, found.stderr
    return [json.loads(line) for line in found.stdout.splitlines()], found.stderr


def _same(hits: list[dict], other: list[dict]) -> bool:
    """Same queries, neighbours and ranks; scores within float32 rounding (the products run in another order)."""
    return ([(h["query"], h["rank"], h["path"]) for h in hits] == [(h["query"], h["rank"], h["path"]) for h in other]
            and np.allclose([h["score"] for h in hits], [h["score"] for h in other], atol=1e-5))


def test_large_index_writes_uses_and_refreshes_its_approximate_index(
        altered: Path, tmp_path: Path, b0_small_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from effnet_cli.similar import ann

    index = tmp_path / "idx"
    exact_index = tmp_path / "exact"
    assert _index(altered, exact_index, b0_small_dir).exit_code == 0  # below the threshold: no approximate index
    assert "ann" not in json.loads((exact_index / "index.json").read_text())
    monkeypatch.setattr(ann, "MIN_ROWS", 20)  # 25 images count as a large index
    assert _index(altered, index, b0_small_dir).exit_code == 0
    head = json.loads((index / "index.json").read_text())
    assert head["ann"] == f"ann-{head['generation']}.faiss" and (index / head["ann"]).is_file()
    approximate, shown = _search(altered, index)
    exact, _ = _search(altered, exact_index)
    assert "(approximate index)" in shown
    assert _same(approximate, exact)
    groups = [run(["dedupe", "--index", str(i), "--format", "jsonl"]) for i in (index, exact_index)]
    assert groups[0].exit_code == 0 and groups[0].stdout.count("\n") >= 20  # the five pictures' copies grouped
    assert groups[0].stdout == groups[1].stdout  # the neighbours' pairs give the all-pairs groups
    # An update: the approximate index is rebuilt for the new generation, the old one removed.
    (altered / "cat_brighter.jpg").unlink()
    shutil.copy(PHOTOS[0], altered / "extra.jpg")
    again = _index(altered, index, b0_small_dir)
    assert "added 1, updated 0, removed 1, kept 24" in again.stderr
    head = json.loads((index / "index.json").read_text())
    assert sorted(n for n in (index).iterdir() if n.suffix == ".faiss") == [index / head["ann"]]
    assert head["ann"] == f"ann-{head['generation']}.faiss"
    hits, _ = _search(altered, index)
    assert not any(h["path"].endswith("cat_brighter.jpg") for h in hits)
    assert any(h["path"].endswith("extra.jpg") for h in hits)


def test_stale_or_missing_approximate_index_is_not_used(
        altered: Path, tmp_path: Path, b0_small_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from effnet_cli.similar import ann

    monkeypatch.setattr(ann, "MIN_ROWS", 20)
    index = tmp_path / "idx"
    assert _index(altered, index, b0_small_dir).exit_code == 0
    exact, _ = _search(altered, tmp_path / "idx")
    head_path = index / "index.json"
    head = json.loads(head_path.read_text())
    # What a run killed after a checkpoint's commit leaves: a generation without its approximate index.
    (index / head.pop("ann")).unlink()
    head_path.write_text(json.dumps(head))
    hits, shown = _search(altered, index)
    assert "has no approximate index yet" in shown and "(approximate index)" not in shown
    assert _same(hits, exact)
    rerun = _index(altered, index, b0_small_dir)  # nothing changed: only the approximate index is built
    assert "added 0, updated 0, removed 0, kept 25" in rerun.stderr
    head = json.loads(head_path.read_text())
    assert head["ann"] == f"ann-{head['generation']}.faiss"
    # Another generation's file under this generation's name (rows differ): refused, exact search.
    small = ann.build_ann(np.load(index / f"vectors-{head['generation']}.npy")[:20])
    ann.write_ann(small, index / head["ann"])
    hits, shown = _search(altered, index)
    assert "cannot be used" in shown and _same(hits, exact)
    monkeypatch.setattr(ann, "available", lambda: False)  # faiss not installed: exact, with a note
    hits, shown = _search(altered, index)
    assert "needs faiss-cpu" in shown and _same(hits, exact)
    assert "no approximate index for 25 images: it needs faiss-cpu" in _index(altered, index, b0_small_dir).stderr


def test_a_large_manifest_is_parsed_only_where_asked(tmp_path: Path) -> None:
    from effnet_cli.output import make_dir
    from effnet_cli.similar.store import Entry, IndexWriter, Manifest, index_lock, read_index

    names = ["/p/a.jpg", "/p/a.jpg.jpg", "/p/line\nbreak.jpg", "/p/\u2028sep.jpg", os.fsdecode(b"/p/caf\xe9.jpg"),
             os.fsdecode(b"/p/caf\xe8.jpg"), '/p/quote".jpg']
    entries = [Entry(name, i, i) for i, name in enumerate(names)]
    directory = tmp_path / "idx"
    with index_lock(make_dir(directory)):
        IndexWriter(directory, {"features": "head"}, 4, 0).commit(entries, [np.eye(len(names), 4, dtype=np.float32)])
    stored = read_index(directory)
    assert isinstance(stored.entries, Manifest) and len(stored) == len(names)
    assert list(stored.entries) == entries and stored.entries[-1] == entries[-1]
    assert [stored.row_of(name) for name in names] == list(range(len(names)))  # each found in the bytes
    assert stored.row_of("/p/a") is None and stored.row_of("/p/line") is None
