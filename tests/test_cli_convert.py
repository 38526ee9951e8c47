"""`effnet convert` from the command line: the written directory classifies, --verify reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import effnet, run
from tests.conftest import randomize

torchvision = pytest.importorskip("torchvision")


def test_convert_then_classify_with_the_result(tmp_path: Path, photos: list[Path]) -> None:
    source = randomize(torchvision.models.efficientnet_b0(weights=None), seed=4).eval()
    ckpt = tmp_path / "tv_b0.pth"
    torch.save(source.state_dict(), ckpt)
    out = tmp_path / "converted"
    res = run(["convert", str(ckpt), "-o", str(out), "--verify"])  # source detected from the keys
    assert res.exit_code == 0, res.stderr
    assert "torchvision" in res.stdout and "verify:" in res.stdout
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 256} and processor["crop_size"]["height"] == 224
    proc = effnet("classify", str(photos[2]), "--model", str(out), "-f", "jsonl")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["predictions"]) == 5
    again = run(["convert", str(ckpt), "-o", str(out)])
    assert again.exit_code != 0 and str(out) in again.stderr  # never overwrites silently
    assert run(["convert", str(ckpt), "-o", str(out), "--overwrite"]).exit_code == 0


def test_convert_errors_are_one_line(tmp_path: Path) -> None:
    missing = run(["convert", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "o")])
    assert missing.exit_code != 0 and missing.stderr.count("\n") == 1 and "nope.pth" in missing.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    bad = run(["convert", str(junk), "-o", str(tmp_path / "o2")])
    assert bad.exit_code != 0 and bad.stderr.count("\n") == 1
