"""`effnet index --devices`: the same engine as `embed` (worker processes, resumable shards) builds the same index."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PHOTOS
from tests.test_ray import ray_session  # noqa: F401 - the fixture
from tests.test_similar import _index, library  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow  # worker processes each load torch: tens of seconds on two cores


def _staging(index: Path) -> list[Path]:
    return [p for p in index.iterdir() if p.name.startswith(".embed-")] if index.is_dir() else []


def test_devices_index_equals_one_process_index(library: Path, tmp_path: Path, b0_small_dir: Path) -> None:
    from effnet_cli.similar.store import read_index

    one, two = tmp_path / "one", tmp_path / "two"
    assert _index(library, one, b0_small_dir).exit_code == 0
    done = _index(library, two, b0_small_dir, "--devices", "cpu:2", "--checkpoint", "2")
    assert done.exit_code == 0, done.stderr
    assert "added 5, updated 0, removed 0, kept 0" in done.stderr
    a, b = read_index(one), read_index(two)
    assert list(a.entries) == list(b.entries) and a.settings == b.settings  # same manifest, same recorded settings
    np.testing.assert_allclose(np.asarray(a.vectors), np.asarray(b.vectors), atol=1e-4)
    assert _staging(two) == []  # the shards are removed once committed
    shutil.copy(PHOTOS[0], library / "copy.jpg")  # an update on devices embeds only the new file
    again = _index(library, two, b0_small_dir, "--devices", "cpu:2")
    assert "added 1, updated 0, removed 0, kept 5" in again.stderr, again.stderr
    assert read_index(two).rows_of.keys() == {*a.rows_of, str(library / "copy.jpg")}


def test_killed_devices_index_run_leaves_the_index_usable_and_a_rerun_finishes(
        library: Path, tmp_path: Path, b0_small_dir: Path) -> None:
    from effnet_cli.similar.store import read_index

    index = tmp_path / "idx"
    assert _index(library, index, b0_small_dir).exit_code == 0
    before = read_index(index)
    more = tmp_path / "more"
    more.mkdir()
    for i in range(30):
        Image.open(PHOTOS[i % len(PHOTOS)]).rotate(i * 11).save(more / f"r{i:02d}.jpg")
    cmd = [sys.executable, "-m", "effnet_cli", "index", str(library), str(more), "-o", str(index), "--model",
           str(b0_small_dir), "--backend", "torch", "-j", "0", "-b", "1", "--checkpoint", "2", "--devices", "cpu:2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if any(len(list(s.glob("_done_emb_*"))) >= 2 for s in _staging(index)):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its device workers
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    [staging] = _staging(index)
    assert len(list(staging.glob("_done_emb_*"))) >= 2  # finished shards, kept for the rerun
    after_kill = read_index(index)  # the previous index, whole and usable
    assert list(after_kill.entries) == list(before.entries) and after_kill.generation == before.generation
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "added 30, updated 0, removed 0, kept 5" in rerun.stderr
    assert len(read_index(index)) == 35 and _staging(index) == []


def test_ray_index_equals_one_process_index(ray_session, library: Path, tmp_path: Path, b0_small_dir: Path) -> None:
    from effnet_cli.similar.store import read_index

    one, on_ray = tmp_path / "one", tmp_path / "ray"
    assert _index(library, one, b0_small_dir).exit_code == 0
    done = _index(library, on_ray, b0_small_dir, "--engine", "ray")
    assert done.exit_code == 0, done.stderr
    a, b = read_index(one), read_index(on_ray)
    assert list(a.entries) == list(b.entries) and a.settings == b.settings
    np.testing.assert_allclose(np.asarray(a.vectors), np.asarray(b.vectors), atol=1e-4)  # layout rows on the actors
