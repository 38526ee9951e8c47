"""What a first-time user reads: usage errors, help, summaries and file diagnoses, in effnet's own words."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest

from tests.cli_helpers import run


def _lines(text: str) -> list[str]:
    return text.splitlines()


@pytest.mark.parametrize("command", ["classify", "embed", "convert"])
def test_a_missing_argument_is_one_line_and_a_pointer_to_help(command: str) -> None:
    res = run([command])
    assert res.exit_code == 2 and res.stdout == ""
    first, hint = _lines(res.stderr)  # not sixty lines of help
    assert first.startswith("effnet: missing ")
    assert hint == f"Try 'effnet {command} --help' for the options."


@pytest.mark.parametrize(("args", "expected"), [
    (["--format", "xml"], "effnet: --format must be one of table, json, jsonl, csv, tsv; got 'xml'."),
    (["-k", "0"], "effnet: --top-k must be at least 1; got 0."),
    (["-k", "three"], "effnet: --top-k must be a whole number; got 'three'."),
    (["--threshold", "1.5"], "effnet: --threshold must be at most 1.0; got 1.5."),
    (["--dtype", "f8"], "effnet: --dtype must be one of float32, bfloat16, float16; got 'f8'."),
])
def test_option_errors_are_in_effnets_words(args: list[str], expected: str) -> None:
    res = run(["classify", "x.jpg", *args])
    assert res.exit_code == 2
    assert _lines(res.stderr)[0] == expected
    assert "Value error" not in res.stderr and "Input should" not in res.stderr


def test_variant_offers_only_loadable_weights_and_says_how_to_get_lite3() -> None:
    help_text = run(["classify", "--help"]).stdout
    offered = re.search(r"--variant [<\[]([^>\]]*)[>\]]", help_text).group(1).split("|")  # <…> or […]
    assert offered == ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "lite0",
                       "v2-b0", "v2-b1", "v2-b2", "v2-b3", "v2-s", "v2-m", "v2-l", "v2-xl"]  # V2: timm's hub weights
    res = run(["classify", "x.jpg", "--variant", "lite3"])
    assert res.exit_code == 2
    assert "--from timm --arch tf_efficientnet_lite3" in _lines(res.stderr)[0]


def test_help_shows_metavars_and_choices_not_python_types() -> None:
    classify = run(["classify", "--help"]).stdout
    assert classify.splitlines()[0] == "Usage: effnet classify [OPTIONS] IMAGE..."
    embed = run(["embed", "--help"]).stdout
    for text in (classify, embed):
        assert "{inputs}" not in text and "<list[str]>" not in text
    assert re.search(r"--pool [<\[]mean\|max[>\]]", embed) and "--features head|stage:N" in embed
    assert run(["convert", "--help"]).stdout.splitlines()[0] == "Usage: effnet convert [OPTIONS] CHECKPOINT"


def test_config_show_has_no_trailing_spaces(tmp_path: Path) -> None:
    for args in (["config", "show", "b0"], ["config", "save", "--phi", "1.5", "-o", str(tmp_path / "c.json")]):
        res = run(args)
        assert res.exit_code == 0, res.stderr
        assert [line for line in res.stdout.splitlines() if line != line.rstrip()] == []


def test_summary_line_after_classify_unless_quiet(b0_small_dir: Path, photos: list[Path]) -> None:
    args = ["classify", str(photos[0]), "missing.jpg", "--model", str(b0_small_dir), "-f", "jsonl", "-j", "0"]
    res = run(args)
    assert res.exit_code == 1
    assert re.fullmatch(r"effnet: classified 2 images \(1 failed\) in \d+\.\d s; jsonl on stdout",
                        _lines(res.stderr)[-1])
    quiet = run([*args, "-q"])
    assert quiet.exit_code == 1 and quiet.stderr == ""


def test_summary_line_after_embed_names_the_output(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    res = run(["embed", *map(str, photos[:2]), "--model", str(b0_small_dir), "-o", str(out), "-j", "0"])
    assert res.exit_code == 0, res.stderr
    assert re.fullmatch(rf"effnet: embedded 2 images in \d+\.\d s; written to {re.escape(str(out))} "
                        r"\(manifest feats.jsonl\)", _lines(res.stderr)[-1])


def test_compile_announces_itself(b0_small_dir: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from effnet_cli.errors import WeightsError
    from effnet_cli.runtime.engine import Engine

    def stop(*args, **kwargs):
        raise WeightsError("stopped before compiling")

    monkeypatch.setattr(Engine, "from_pretrained", stop)
    res = run(["classify", str(photos[0]), "--model", str(b0_small_dir), "--compile"])
    assert _lines(res.stderr)[0].startswith("effnet: compiling the model with torch.compile")


def test_a_broken_labels_file_is_named(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text('["cat\x01"]')
    res = run(["classify", str(photos[0]), "--model", str(b0_small_dir), "--labels", str(labels)])
    assert res.exit_code == 2
    assert _lines(res.stderr) == [f"effnet: Labels file {labels} is not valid JSON: Invalid control character "
                                  f"at line 1, column 6."]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_convert_says_what_a_file_really_is(tmp_path: Path) -> None:
    import torch

    notes = tmp_path / "notes.pth"
    notes.write_text("my notes about the model\n")
    res = run(["convert", str(notes), "-o", str(tmp_path / "o1")])
    assert res.exit_code == 1
    assert _lines(res.stderr) == [f"effnet: {notes} is not a PyTorch checkpoint: it is neither a zip archive "
                                  f"nor a pickle (it starts with b'my notes')."]
    code = tmp_path / "code.pth"
    with open(code, "wb") as fh:
        pickle.dump({"weight": _RunsCode()}, fh)
    res = run(["convert", str(code), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 1 and len(_lines(res.stderr)) == 1
    assert f"{code} is a pickle that would run {os.system.__module__}.system when loaded, so it was refused" in res.stderr
    cut = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(3)}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    res = run(["convert", str(cut), "-o", str(tmp_path / "o3")])
    assert res.exit_code == 1 and len(_lines(res.stderr)) == 1
    assert res.stderr.rstrip().endswith("failed finding central directory).")  # torch's reason, whole


def test_a_full_output_directory_names_overwrite(tmp_path: Path) -> None:
    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.hub import save_pretrained

    source = save_pretrained(EfficientNetForImageClassification(EfficientNetConfig.from_variant("b0", num_labels=2)),
                             tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run(["convert", str(source), "-o", str(out)])
    assert res.exit_code == 2 and "--overwrite" in _lines(res.stderr)[0]  # decided by the arguments: a usage error
    assert "overwrite=True" not in res.stderr  # the Python API's spelling is not the command line's
    assert json.loads(json.dumps((out / "keep.txt").read_text())) == "mine"
