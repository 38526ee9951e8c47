"""The bundled weights from the command line, offline, as a person would run it on a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import read_terminal
from tests.conftest import PHOTOS


def test_classify_table_on_a_terminal_offline(tmp_path: Path) -> None:
    """`effnet classify photos/*.jpg --variant lite0` on a TTY: a table per photo, cat.jpg's top-1 a cat."""
    leader, follower = pty.openpty()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "no-hub-cache"), "COLUMNS": "100",
           "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "classify", *map(str, PHOTOS), "--variant", "lite0"],
                            stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    raw_screen = read_terminal(leader)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    os.close(leader)
    raw = raw_screen.decode()
    assert not re.search(r"\x1b\[[0-9;]*?(?:3[0-8]|9[0-7])(?:;[0-9;]*)?m", raw)  # NO_COLOR: bold, never colour
    screen = re.sub(r"\x1b\[[0-9;]*m", "", raw)
    sections = screen.split(str(PHOTOS[0].parent) + os.sep)[1:]
    by_name = {s.split("\r\n", 1)[0].strip(): s for s in sections}
    assert set(by_name) == {p.name for p in PHOTOS}
    cat_rows = [line for line in by_name["cat.jpg"].splitlines() if "│" in line]
    top1 = cat_rows[0]
    assert top1.split("│")[0].strip() == "1"
    assert any(name in top1 for name in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"))
    assert "%" in top1
    espresso_top1 = [line for line in by_name["espresso.jpg"].splitlines() if "│" in line][0]
    assert "espresso" in espresso_top1
