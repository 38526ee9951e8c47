"""`effnet classify` with file names a real photo folder can hold: every format, every stream, every reader.

Each record must be valid UTF-8 and give its path back exactly through the
standard readers (json, the csv module, plus pathtext.path_from_fields for
names that are not UTF-8); a terminal shows each name as itself, never as
markup; a closed pipe is a quiet success.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from effnet_cli.records.pathtext import path_from_fields
from effnet_cli.records.stream import CSV_HEADER, RecordWriter
from effnet_cli.records.results import Prediction, Result
from tests.cli_helpers import effnet, read_terminal, run
from tests.hostile import HOSTILE_NAMES, make_hostile_corpus


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.radial_gradient("L").resize((48, 48)).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every hostile name holding a small JPEG, plus an undecodable file whose name is hostile too."""
    directory = tmp_path_factory.mktemp("hostile")
    paths = make_hostile_corpus(directory, _tiny_jpeg())
    broken = os.path.join(os.fsencode(directory), b"broken\n[/x] \xff.jpg")  # "broken\n[" is a directory
    os.makedirs(os.path.dirname(broken))
    with open(broken, "wb") as fh:
        fh.write(b"not an image")
    return [*paths, os.fsdecode(broken)]


def _broken(path: str) -> bool:
    return "broken" in path


def _nul_list(paths: list[str]) -> bytes:
    return b"".join(os.fsencode(p) + b"\0" for p in paths)


def _check_records(records: list[dict], paths: list[str]) -> None:
    """One record per path, in order, each naming its file exactly; the broken one has an error."""
    assert [path_from_fields(r) for r in records] == paths
    for record, path in zip(records, paths):
        assert os.path.exists(path_from_fields(record))
        assert ("error" in record) == _broken(path)


def _common(model: Path) -> list[str]:
    return ["--model", str(model), "-k", "2", "-j", "0", "--no-progress"]


def test_jsonl_under_a_strict_utf8_stdout(b0_small_dir: Path, corpus: list[str]) -> None:
    """Reproduction 1: names that are not UTF-8 on a strict UTF-8 stdout; `find -print0 | effnet classify - -0`."""
    proc = effnet("classify", "-", "-0", *_common(b0_small_dir), "-f", "jsonl", stdin=_nul_list(corpus),
                  env={"PYTHONIOENCODING": "utf-8:strict"})
    err = proc.stderr.decode()
    assert proc.returncode == 1, err  # the broken file fails, every other name is classified
    assert "Traceback" not in err
    text = proc.stdout.decode("utf-8")  # strict: raises on any invalid byte
    records = [json.loads(line) for line in text.split("\n")[:-1]]
    _check_records(records, corpus)
    with_bytes = [r for r in records if "path_bytes" in r]  # exactly the names that are not UTF-8
    prefix = len(os.path.dirname(corpus[0])) + 1
    assert [r["path"][prefix:] for r in with_bytes] == [
        "caf\ufffd latin1.jpg", "broken\n[/x] \ufffd.jpg"]
    # The one failure is one line on stderr, its control characters shown, not obeyed.
    # The summary line aside, and the one-time export note of a first run on this model (as when run alone).
    failures = [line for line in err.splitlines() if " classified " not in line and "exporting the model" not in line]
    assert len(failures) == 1 and "broken\\n[/x] \ufffd.jpg:" in failures[0]


def test_csv_from_a_directory_reads_back_with_the_csv_module(b0_small_dir: Path, corpus: list[str]) -> None:
    """CSV of a walked directory: one row per prediction, every exact path back through the csv module."""
    res = run(["classify", os.path.dirname(corpus[0]), *_common(b0_small_dir), "-f", "csv"])
    assert res.exit_code == 1 and "Traceback" not in res.stderr, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout, newline="")))
    assert tuple(rows[0]) == CSV_HEADER
    by_path: dict[str, list[dict]] = {}
    for row in rows:
        by_path.setdefault(path_from_fields(row), []).append(row)
    assert sorted(by_path) == sorted(corpus)
    for path, group in by_path.items():
        broken = _broken(path)
        assert [r["rank"] for r in group] == ([""] if broken else ["1", "2"])
        assert bool(group[0]["error"]) == broken


def test_records_are_utf8_whatever_the_stdout_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an ASCII locale (PYTHONIOENCODING=ascii), machine records still go out as UTF-8."""
    from effnet_cli.cli.render import utf8_stdout

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    utf8_stdout()
    writer = RecordWriter(sys.stdout, "jsonl")
    writer.write([Result(0, "café 日本.jpg", predictions=[Prediction(1, 0, "ñ", 1.0)]),
                  Result(1, os.fsdecode(b"caf\xe9.jpg"), error="cannot identify image file")])
    writer.close()
    records = [json.loads(line) for line in raw.getvalue().decode("utf-8").split("\n")[:-1]]
    assert [path_from_fields(r) for r in records] == ["café 日本.jpg", os.fsdecode(b"caf\xe9.jpg")]
    assert records[0]["predictions"][0]["label"] == "ñ"


@pytest.mark.parametrize("fmt", ["json", "tsv"])
def test_json_and_tsv_in_process(b0_small_dir: Path, corpus: list[str], fmt: str) -> None:
    res = run(["classify", "-", "-0", *_common(b0_small_dir), "-f", fmt], _nul_list(corpus))
    assert res.exit_code == 1, res.stderr
    if fmt == "json":
        _check_records(json.loads(res.stdout), corpus)
    else:
        rows = list(csv.DictReader(io.StringIO(res.stdout, newline=""), delimiter="\t"))
        assert [path_from_fields(r) for r in rows if r["rank"] in ("", "1")] == corpus


def test_newline_separated_lists_split_on_newline_only(b0_small_dir: Path, corpus: list[str]) -> None:
    """A plain `find | effnet classify -` list: U+2028 and a carriage return inside a name survive."""
    keep = [p for p in corpus if "\n" not in p]
    res = run(["classify", "-", *_common(b0_small_dir), "-f", "jsonl"], b"".join(os.fsencode(p) + b"\n" for p in keep))
    assert res.exit_code == 0, res.stderr
    _check_records([json.loads(line) for line in res.stdout.split("\n")[:-1]], keep)
    assert any("\u2028" in p for p in keep) and any("\r" in p for p in keep)


def test_table_on_a_terminal_shows_every_name(b0_small_dir: Path, corpus: list[str]) -> None:
    """Reproduction 8: on a terminal (stdout and stderr) names show as themselves, markup is never read."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "classify", "-", "-0", *_common(b0_small_dir)],
                            stdin=subprocess.PIPE, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    proc.stdin.write(_nul_list(corpus))
    proc.stdin.close()
    raw_screen = read_terminal(leader)
    assert proc.wait(timeout=300) == 1
    os.close(leader)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw_screen.decode("utf-8"))
    assert "Traceback" not in screen and "MarkupError" not in screen
    shown = {"newline": "new\\nline.jpg", "carriage_return": "carriage\\rreturn.jpg", "tab": "tab\\there.jpg",
             "not_utf8": "caf\ufffd latin1.jpg"}
    for key, raw in HOSTILE_NAMES.items():
        name = shown.get(key) or raw.decode("utf-8")
        assert os.sep + name + "\r\n" in screen, key  # the whole name, alone on its line
    assert "photo [edited].jpg" in screen and "markup [/x] [bold]end.jpg" in screen
    assert "carriage\rreturn" not in screen  # a carriage return in a name never moves the cursor
    assert "broken\\n[/x] \ufffd.jpg: " in screen  # the error line, markup and all, on the terminal


def test_error_and_info_lines_never_read_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproduction 8 for messages: a path with a closing tag on a terminal's stderr prints as itself."""
    from effnet_cli.cli import render

    console = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=200)
    monkeypatch.setattr(render, "stderr_console", lambda: console)
    monkeypatch.setattr(render, "stderr_is_terminal", lambda: True)
    render.error_line("photos/[/x] photo [edited].jpg: cannot identify image file")
    render.info_line("wrote [bold]out[/bold]/")
    lines = console.file.getvalue().splitlines()
    assert lines == ["effnet: photos/[/x] photo [edited].jpg: cannot identify image file",
                     "effnet: wrote [bold]out[/bold]/"]


def test_csv_quotes_a_carriage_return() -> None:
    """Reproduction 7: a "\\r" in a path or label is quoted, so the csv module reads the row back."""
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        out = io.StringIO()
        writer = RecordWriter(out, fmt)
        writer.write([Result(0, "dir/a\rb.jpg", predictions=[Prediction(1, 7, "x\ry", 0.5)]),
                      Result(1, "plain.jpg", predictions=[Prediction(1, 3, "cat", 0.25)]),
                      Result(2, "c\r.jpg", error="cannot identify image file")])
        writer.close()
        rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline=""), delimiter=delimiter))
        assert [(r["path"], r["label"], r["error"]) for r in rows] == [
            ("dir/a\rb.jpg", "x\ry", ""), ("plain.jpg", "cat", ""), ("c\r.jpg", "", "cannot identify image file")]
        assert out.getvalue().split("\n")[2] == f"plain.jpg{delimiter}1{delimiter}3{delimiter}cat{delimiter}" \
                                                f"0.250000{delimiter}{delimiter}"  # other rows stay minimal


def test_headless_model_is_refused_before_any_output(tmp_path: Path, b0_small_dir: Path) -> None:
    """Reproduction 5: a checkpoint without a classification head: exit 2, one line naming `effnet embed`."""
    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.hub import save_pretrained
    from effnet_cli.core.processor import EfficientNetImageProcessor

    config = EfficientNetConfig.from_variant("b0", num_labels=0, id2label=None, label2id=None)
    headless = tmp_path / "headless"
    processor = EfficientNetImageProcessor.from_json_file(b0_small_dir / "preprocessor_config.json")
    save_pretrained(EfficientNetForImageClassification(config), headless, processor)
    image = tmp_path / "a.jpg"
    image.write_bytes(_tiny_jpeg())
    res = run(["classify", str(image), "--model", str(headless), "-f", "csv"])
    assert res.exit_code == 2
    assert res.stdout == ""  # not even the CSV header
    assert res.stderr.count("\n") == 1 and "effnet embed" in res.stderr and "classification head" in res.stderr
    out = tmp_path / "preds"
    res = run(["classify", str(image), "--model", str(headless), "--output-dir", str(out)])
    assert res.exit_code == 2 and "effnet embed" in res.stderr and not out.exists()


@pytest.mark.parametrize("fmt", ["jsonl", "table"])
def test_closed_pipe_is_a_quiet_success(b0_small_dir: Path, tmp_path: Path, fmt: str) -> None:
    """Reproduction 9: `effnet classify … | head -c 100` exits 0 with nothing on stderr.

    -k 1000 makes each image's output tens of kilobytes, more than a pipe holds,
    so the writer is certain to write after the reader has gone.
    """
    jpeg = _tiny_jpeg()
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.jpg")
        images[-1].write_bytes(jpeg)
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "classify", *map(str, images), *_common(b0_small_dir),
                             "-k", "1000", "-b", "1", "-f", fmt], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err.decode()
    assert len(first) == 100 and err == b""


def test_records_do_not_import_the_inference_stack() -> None:
    """Writing records (and reading them back) stays light: no torch, no Rich."""
    code = "import sys, effnet_cli.records.stream; print('torch' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_writers_do_not_import_the_inference_stack() -> None:
    """Writing or reading outputs must not pull in torch (writers.py, records.py, pathtext.py, the shard readers)."""
    code = ("import sys; import effnet_cli.records.manifest, effnet_cli.records.stream, effnet_cli.records.pathtext, effnet_cli.output; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
