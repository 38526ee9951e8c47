"""`effnet classify` end to end: formats, stdin, order, exit codes (CliRunner and real processes)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from tests.cli_helpers import effnet, run


def test_jsonl_records_for_every_photo_in_order(b0_dir: Path, photos: list[Path]) -> None:
    res = run(["classify", *map(str, photos), "--model", str(b0_dir), "--format", "jsonl", "-k", "3", "-j", "0"], None)
    assert res.exit_code == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in photos]
    for r in records:
        assert [p["rank"] for p in r["predictions"]] == [1, 2, 3]
        scores = [p["score"] for p in r["predictions"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert all(isinstance(p["label"], str) and isinstance(p["index"], int) for p in r["predictions"])


def test_predictions_equal_the_python_api(b0_dir: Path, photos: list[Path]) -> None:
    import torch
    from PIL import Image

    from effnet_cli import load_pretrained

    model, processor = load_pretrained(b0_dir)
    res = run(["classify", str(photos[0]), "--model", str(b0_dir), "-f", "json", "-k", "5", "--full-decode"], None)
    record = json.loads(res.stdout)[0]
    with torch.no_grad():
        probs = model(processor(Image.open(photos[0]).convert("RGB"))["pixel_values"]).logits.softmax(-1)[0]
    top = probs.topk(5)
    assert [p["index"] for p in record["predictions"]] == top.indices.tolist()
    assert [p["score"] for p in record["predictions"]] == pytest.approx(top.values.tolist(), rel=1e-4)


def test_every_format_parses_with_the_standard_library(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    args = ["classify", str(photos[1]), str(bad), str(photos[2]), "--model", str(b0_dir), "-k", "2"]
    j = run(args + ["-f", "json"], None)
    data = json.loads(j.stdout)
    assert [d["path"] for d in data] == [str(photos[1]), str(bad), str(photos[2])]
    assert "error" in data[1] and "predictions" not in data[1] and len(data[0]["predictions"]) == 2
    assert j.exit_code == 1 and f"{bad}:" in j.stderr
    for fmt, delim in (("csv", ","), ("tsv", "\t")):
        out = run(args + ["-f", fmt], None).stdout
        rows = list(csv.DictReader(io.StringIO(out), delimiter=delim))
        assert [r["path"] for r in rows] == [str(photos[1])] * 2 + [str(bad)] + [str(photos[2])] * 2
        assert rows[2]["error"] and not rows[2]["label"] and rows[0]["rank"] == "1"
    jl = run(args + ["-f", "jsonl"], None)
    assert len([json.loads(x) for x in jl.stdout.splitlines()]) == 3


def test_stdin_lines_and_null_separated(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    odd = tmp_path / "name with\nnewline é.jpg"
    odd.write_bytes(photos[0].read_bytes())
    lines = "\n".join(map(str, photos[:2])) + "\n"
    res = run(["classify", "-", "--model", str(b0_dir), "-f", "jsonl"], lines)
    assert [json.loads(x)["path"] for x in res.stdout.splitlines()] == [str(p) for p in photos[:2]]
    null = b"\0".join(os.fsencode(p) for p in (photos[2], odd)) + b"\0"
    proc = effnet("classify", "-", "-0", "--model", str(b0_dir), "-f", "jsonl", stdin=null)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [json.loads(x)["path"] for x in proc.stdout.decode().splitlines()] == [str(photos[2]), str(odd)]


def test_directories_recurse_in_stable_order(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deeper" / "z.jpg").write_bytes(photos[0].read_bytes())
    (tmp_path / "a" / "y.jpg").write_bytes(photos[1].read_bytes())
    (tmp_path / "notes.txt").write_text("skip me")
    first = run(["classify", str(tmp_path), "--model", str(b0_dir), "-f", "jsonl", "-j", "2"], None)
    second = run(["classify", str(tmp_path), "--model", str(b0_dir), "-f", "jsonl", "-j", "0", "-b", "1"], None)
    paths = [json.loads(x)["path"] for x in first.stdout.splitlines()]
    assert paths == [str(tmp_path / "a" / "y.jpg"), str(tmp_path / "b" / "deeper" / "z.jpg")]
    # Workers and batch size change nothing but float rounding.
    for a, b in zip(first.stdout.splitlines(), second.stdout.splitlines(), strict=True):
        ra, rb = json.loads(a), json.loads(b)
        assert ra["path"] == rb["path"]
        assert [p["index"] for p in ra["predictions"]] == [p["index"] for p in rb["predictions"]]
        assert [p["score"] for p in ra["predictions"]] == pytest.approx([p["score"] for p in rb["predictions"]], rel=1e-4)


def test_threshold_and_labels_file(b0_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    res = run(["classify", str(photos[0]), "--model", str(b0_dir), "-f", "json", "--labels", str(labels),
                "-k", "1000", "--threshold", "0.01"], None)
    preds = json.loads(res.stdout)[0]["predictions"]
    assert preds and all(p["score"] >= 0.01 for p in preds) and len(preds) < 1000
    assert all(p["label"] == f"class {p['index']}" for p in preds)


@pytest.mark.parametrize("args,message", [
    (["classify", "--variant", "b9", "x.jpg"], "b9"),
    (["classify", "--top-k", "0", "x.jpg"], "top-k"),
    (["classify", "--format", "xml", "x.jpg"], "xml"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    res = run(args, None)
    assert res.exit_code == 2 and message in res.stderr


def test_no_inputs_is_a_usage_error(tmp_path: Path, b0_dir: Path) -> None:
    res = run(["classify", str(tmp_path), "--model", str(b0_dir)], None)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1


def test_missing_model_dir_is_one_line_not_a_traceback(tmp_path: Path, photos: list[Path]) -> None:
    proc = effnet("classify", str(photos[0]), "--model", str(tmp_path / "nope"))
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Traceback" not in err and err.count("\n") == 1 and "nope" in err


def test_offline_hub_model_without_cache_is_one_clear_line(photos: list[Path], tmp_path: Path) -> None:
    proc = effnet("classify", str(photos[0]), "--variant", "b3",
                   env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "google/efficientnet-b3" in err and "cache" in err


def test_version_and_help() -> None:
    from effnet_cli import __version__

    assert run(["--version"], None).stdout.strip() == f"effnet {__version__}"
    for cmd in ("classify", "embed", "convert", "config"):
        proc = effnet(cmd, "--help")
        assert proc.returncode == 0 and b"Usage" in proc.stdout
