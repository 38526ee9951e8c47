"""``--report`` pages: every input with its top label, self-contained, and quick in a real browser."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from browser import cards_of, distinct_colours, ready_ms, render, screenshot
from cli_helpers import run

pytest.importorskip("jinja2", reason="--report needs Jinja2 (pip install 'effnet-cli[report]')")

IMAGES = Path(__file__).parent / "data" / "images"
THUMB_BYTES = 16_000  # a thumbnail's data URI may not exceed this (128 px JPEG: a few kB)
NETWORK = re.compile(r"https?:", re.IGNORECASE)


@pytest.fixture(scope="module")
def classified(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bundled lite0 over the sample photos, an odd name and a broken file; with and without --report."""
    place = tmp_path_factory.mktemp("report")
    odd = place / "odd name [1] <b>&.jpg"
    odd.write_bytes((IMAGES / "cat.jpg").read_bytes())
    bad = place / "broken.jpg"
    bad.write_bytes(b"not an image")
    inputs = [*map(str, sorted(IMAGES.glob("*.jpg"))), str(odd), str(bad)]
    args = ["classify", *inputs, "-f", "jsonl", "--backend", "torch", "-j", "0", "-q", "-k", "3"]
    page = place / "page.html"
    return {"plain": run(args), "report": run([*args, "--report", str(page)]), "page": page, "inputs": inputs,
            "place": place}


def test_records_are_unchanged_by_report(classified: dict) -> None:
    plain, report = classified["plain"], classified["report"]
    assert report.exit_code == plain.exit_code == 1  # one broken input
    assert report.stdout == plain.stdout


def test_every_input_appears_with_its_top_label(classified: dict) -> None:
    html = classified["page"].read_text("utf-8")
    cards = cards_of(html)
    records = {r["path"]: r for r in map(json.loads, classified["plain"].stdout.splitlines())}
    assert sorted(c["title"] for c in cards) == sorted(classified["inputs"])
    for card in cards:
        record = records[card["title"]]
        if "error" in record:
            assert "failed" in card["classes"] and record["error"] in card["note"] and not card["thumb"]
        else:
            assert card["labels"][0] == record["predictions"][0]["label"] and card["thumb"]
    assert "failed" in cards[0]["classes"]  # failed first, then by rising top-1 score
    scores = [records[c["title"]]["predictions"][0]["score"] for c in cards[1:]]
    assert scores == sorted(scores)


def test_page_is_self_contained(classified: dict) -> None:
    html = classified["page"].read_text("utf-8")
    assert not NETWORK.search(html)
    assert "<script src" not in html and "@import" not in html and "url(" not in html
    uris = re.findall(r'data-src="(data:image/jpeg;base64,[^"]+)"', html)
    assert len(uris) == len(classified["inputs"]) - 1 and max(map(len, uris)) <= THUMB_BYTES
    assert "<b>&" not in html  # the odd name is escaped, not markup


def test_page_renders_in_chromium(classified: dict, tmp_path: Path) -> None:
    shown = render(classified["page"])
    assert shown.console == []
    cards = cards_of(shown.dom)
    assert len(cards) == len(classified["inputs"]) and not any(c["hidden"] for c in cards)
    assert all(c["shown"] == c["thumb"] for c in cards)  # the first screens' thumbnails are decoded at once
    png = screenshot(classified["page"], tmp_path / "page.png")
    assert distinct_colours(png) > 200  # photos, bars and text; a blank page has a handful


def test_existing_page_and_output_dir_are_refused(classified: dict, tmp_path: Path) -> None:
    page = classified["page"]
    before = page.read_bytes()
    again = run(["classify", str(IMAGES / "cat.jpg"), "--report", str(page), "-q"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr and page.read_bytes() == before
    sharded = run(["classify", str(IMAGES / "cat.jpg"), "--report", str(tmp_path / "p.html"),
                   "--output-dir", str(tmp_path / "out")])
    assert sharded.exit_code == 2 and "--output-dir" in sharded.stderr


def test_dedupe_report_shows_groups_with_the_kept_one_marked(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.jpg", "rocket.jpg", "espresso.jpg"):
        (photos / name).write_bytes((IMAGES / name).read_bytes())
    with Image.open(IMAGES / "cat.jpg") as cat:
        cat.resize((cat.width // 2, cat.height // 2)).save(photos / "cat small.jpg", quality=80)
    with Image.open(IMAGES / "rocket.jpg") as rocket:
        rocket.save(photos / "rocket copy.png")
    page = tmp_path / "groups.html"
    result = run(["dedupe", str(photos), "--report", str(page), "-f", "jsonl", "-q", "--backend", "torch"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["group"] for r in rows} == {1, 2}
    shown = render(page)
    assert shown.console == []
    cards = cards_of(shown.dom)
    assert [(c["group"], c["title"], "kept" in c["classes"]) for c in cards] == [
        (r["group"], r["path"], r["keep"]) for r in rows]
    assert NETWORK.search(page.read_text("utf-8")) is None
    assert distinct_colours(screenshot(page, tmp_path / "groups.png")) > 200
    again = run(["dedupe", str(photos), "--report", str(page), "-q"])  # refused before anything is embedded
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classify page of 1,000 inputs (real thumbnails of small generated images, seeded scores, 1 in 50 failed)."""
    from effnet_cli.records.results import Prediction, Result
    from effnet_cli.report.classify import ClassifyReport

    place = tmp_path_factory.mktemp("thousand")
    rng = random.Random(0)
    labels = [f"class {i}" for i in range(40)]
    results = []
    for i in range(1000):
        path = place / f"img_{i:04d}.png"
        if i % 50 == 7:
            results.append(Result(position=i, path=str(path), error="not an image (text file)"))
            continue
        Image.new("RGB", (96, 64), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(path)
        scores = sorted((rng.random() for _ in range(5)), reverse=True)
        total = sum(scores) * rng.uniform(1.0, 2.0)
        results.append(Result(position=i, path=str(path), predictions=[
            Prediction(rank=r + 1, index=j, label=labels[j], score=s / total)
            for r, (s, j) in enumerate(zip(scores, rng.sample(range(40), 5)))]))
    page = ClassifyReport(place / "page.html", model="test")
    page.add(results)
    page.write()
    return place / "page.html"


def test_a_thousand_inputs_render_in_under_5_s(thousand: Path) -> None:
    shown = render(thousand)
    cards = cards_of(shown.dom)
    print(f"1,000 cards: browser run {shown.seconds:.2f} s, script done {ready_ms(shown.dom)} ms after navigation, "
          f"page {thousand.stat().st_size / 1e6:.2f} MB")
    assert shown.console == []
    assert len(cards) == 1000 and sum("failed" in c["classes"] for c in cards) == 20
    assert sum(c["shown"] for c in cards) < 1000  # the rest wait until they scroll near
    assert shown.seconds < 5.0


def test_the_label_filter_hides_the_other_cards(thousand: Path) -> None:
    shown = render(thousand, fragment="label=class%203")
    cards = cards_of(shown.dom)
    visible = [c for c in cards if not c["hidden"]]
    assert shown.console == [] and 0 < len(visible) < 1000
    assert all(c["key"] == "class 3" for c in visible)
    assert all(c["key"] != "class 3" for c in cards if c["hidden"])


def test_the_browser_check_catches_console_errors(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><article class='card'></article><script>undefinedName();</script></body></html>")
    shown = render(page)
    assert len(cards_of(shown.dom)) == 1 and any("undefinedName" in line for line in shown.console)


def test_a_thumbnail_whose_read_hangs_is_left_out_at_the_limit(tmp_path: Path, monkeypatch) -> None:
    """The page decodes each image again for its thumbnail: a file that hangs now costs that thumbnail only."""
    import os
    import threading
    import time

    from effnet_cli.data import decode
    from effnet_cli.report.page import thumbnail

    photo = tmp_path / "p.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(photo)
    assert thumbnail(str(photo)).startswith("data:image/jpeg;base64,")
    real = decode.open_image

    def hanging(path, **kwargs):
        # A read that blocks, as on a stale network mount; answered after 5 s, so that without the limit
        # the test fails instead of hanging.
        readable, writable = os.pipe()
        threading.Timer(5, os.write, (writable, b"x")).start()
        os.read(readable, 1)
        return real(path, **kwargs)

    monkeypatch.setattr(decode, "open_image", hanging)
    started = time.monotonic()
    assert thumbnail(str(photo), time_limit=0.2) is None
    assert time.monotonic() - started < 4
