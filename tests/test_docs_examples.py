"""The command output shown in README.md and docs/ is what effnet prints today (docs/examples.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))
import examples  # noqa: E402 - docs/examples.py, the script that writes the shown outputs


def test_numbers_compare_to_their_shown_precision() -> None:
    assert examples.same("tripod 0.939 36.7%", "tripod 0.93858802318573 36.7%")
    assert not examples.same("tripod 0.961 36.7%", "tripod 0.93858802318573 36.7%")
    assert examples.same('"score": 0.9524572491645813', '"score": 0.9524571299552917')  # float noise
    assert not examples.same("(5, 1280) float32", "(5, 1280) float16")
    assert not examples.same("Egyptian cat", "tiger cat")


def test_blocks_are_found_with_their_commands(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- example: setup touch a -->\n```\n$ ls\nold\n```\n```\n$ not marked\n```\n")
    (found,) = examples.find_examples(page)
    assert (found.setup, found.commands, found.shown) == ("touch a", ["ls"], "$ ls\nold")


def test_an_image_marker_keeps_what_the_block_wrote(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- example: setup touch a image out.png docs/images/x.png -->\n```\n$ cp a out.png\n```\n")
    (found,) = examples.find_examples(page)
    assert (found.setup, found.image) == ("touch a", ("out.png", "docs/images/x.png"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "out.png").write_bytes(b"picture")
    target = tmp_path / "docs" / "x.png"
    (missing,) = examples.picture(work / "out.png", target, {}, keep=False)  # --check: the picture must exist
    assert missing.endswith("x.png is missing: run docs/examples.py)") and not target.exists()
    assert examples.picture(work / "out.png", target, {}, keep=True) == [] and target.read_bytes() == b"picture"
    assert examples.picture(work / "gone.png", target, {}, keep=True) == ["(the picture's source gone.png was not written)"]


def test_a_here_document_is_part_of_its_command(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- example -->\n```\n$ python - <<'EOF'\nprint(6 * 7)\nEOF\n41\n$ echo done\ndone\n```\n")
    (found,) = examples.find_examples(page)
    assert found.commands == ["python - <<'EOF'\nprint(6 * 7)\nEOF", "echo done"]
    env = examples.environment(tmp_path, tmp_path, tmp_path)
    assert examples.run_example(found, env) == "$ python - <<'EOF'\nprint(6 * 7)\nEOF\n42\n$ echo done\ndone"


@pytest.mark.slow
def test_every_shown_output_matches_a_real_run() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "examples.py"), "--check"], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_runtime_only_program_in_the_docs_gives_classifys_top_1(tmp_path: Path, photos: list[Path]) -> None:
    # docs/export.md's "Running model.onnx without effnet" is a whole program: run it as printed on a
    # fresh export and compare its top classes with effnet classify's on the same photos.
    (block,) = [e for e in examples.find_examples(REPO / "docs" / "export.md")
                if "ort.InferenceSession" in e.commands[0] and "effnet_cli" not in e.commands[0]]
    program = block.commands[0].split("\n", 1)[1].rsplit("\nEOF", 1)[0]
    effnet = [sys.executable, "-m", "effnet_cli"]
    subprocess.run([*effnet, "export", "lite0", "-o", str(tmp_path / "lite0-onnx")], check=True, capture_output=True)
    paths = [str(p) for p in photos]
    shown = subprocess.run([sys.executable, "-c", program, *paths], cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout.splitlines()
    classified = subprocess.run([*effnet, "classify", *paths, "-k", "1", "-f", "jsonl"], check=True,
                                capture_output=True, text=True).stdout.splitlines()
    assert [line.split("\t")[:2] for line in shown] == [
        [record["path"], str(record["predictions"][0]["index"])] for record in map(json.loads, classified)
    ]
