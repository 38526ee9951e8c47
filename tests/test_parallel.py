"""Several devices on one machine (``--devices``), exercised with CPU workers: same results, crashes recover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet_cli.errors import InputError
from effnet_cli.scale.devices import parse_devices
from effnet_cli.scale.shards import read_embeddings
from tests.cli_helpers import effnet, run


def _images(directory: Path, n: int, broken: tuple[int, ...] = ()) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        path = directory / f"img{i:03d}.png"
        if i in broken:
            path.write_bytes(b"GIF89a truncated")
        else:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def test_device_lists() -> None:
    assert parse_devices("cpu:2") == ["cpu", "cpu"]
    assert parse_devices("cpu,cpu,cpu") == ["cpu"] * 3
    assert parse_devices("cpu") == ["cpu"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the messages of a machine without GPUs")
@pytest.mark.parametrize("text, message", [("all", "found no CUDA device"), ("cuda:0", "has 0 CUDA devices"),
                                           ("cpu,", "empty item"), ("cpu:x", "worker count")])
def test_devices_that_do_not_exist_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_devices(text)


@pytest.mark.slow
def test_two_cpu_workers_equal_one_process(b0_small_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 12, broken=(5,))
    # -b 2 with shard size 2: every batch holds the same inputs in both runs, so the numbers are identical.
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "0", "--shard-size", "2"]
    assert run(["embed", *common, "--output-dir", str(tmp_path / "one")]).exit_code == 1
    res = effnet("embed", *common, "--output-dir", str(tmp_path / "two"), "--devices", "cpu:2")
    assert res.returncode == 1, res.stderr.decode()
    assert res.stderr.decode().count("img005.png: ") == 1  # the failure is reported once, by the parent
    names = sorted(p.name for p in (tmp_path / "two").glob("emb_*.npy"))
    assert names == [f"emb_p00{i}of002_0000{k}.npy" for i in range(2) for k in range(3)]

    one_array, one_records = read_embeddings(tmp_path / "one")
    two_array, two_records = read_embeddings(tmp_path / "two")
    assert two_records == one_records
    np.testing.assert_allclose(two_array, one_array, rtol=0, atol=1e-6)


def _spawned_children(parent: int) -> list[int]:
    """Pids of ``parent``'s multiprocessing-spawn children (the device workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found


def _same_embeddings(got: Path, want: Path) -> None:
    want_array, want_records = read_embeddings(want)
    array, records = read_embeddings(got)
    assert records == want_records
    np.testing.assert_allclose(array, want_array, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_worker_killed_from_outside_is_replaced_and_the_run_completes(b0_small_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 12)
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "0", "--shard-size", "2"]
    assert run(["embed", *common, "--output-dir", str(tmp_path / "ref")]).exit_code == 0

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "embed", *common, "--output-dir", str(out),
                             "--devices", "cpu:2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _spawned_children(proc.pid)
        time.sleep(0.05)
    assert len(workers) == 2
    os.kill(min(workers), signal.SIGKILL)  # as the OOM killer would
    _, err = proc.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 0, lines
    # One line says which worker died, how, and what its replacement redoes; then the usual summary.
    assert len(lines) == 2, lines
    assert "(cpu) was killed by SIGKILL; restarting it after 1 s (restart 1 of 3) to redo 6 inputs in 3 unfinished " \
           "shards; 0 finished shards of its partition kept" in lines[0], lines
    assert lines[1].startswith("effnet: embedded 12 images in "), lines
    _same_embeddings(out, tmp_path / "ref")


@pytest.mark.slow
def test_a_replaced_worker_keeps_its_finished_shards_and_redoes_the_rest(b0_small_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 12, broken=(5,))
    # -j 1: the killed worker leaves its decode process's semaphores behind, which must not show as a warning.
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "1", "--shard-size", "2"]
    assert run(["embed", *common, "--output-dir", str(tmp_path / "ref")]).exit_code == 1
    out = tmp_path / "out"
    # Worker 1 (inputs 1, 3, 5 ...) kills itself after its second shard, which holds the broken img005.png.
    res = effnet("embed", *common, "--output-dir", str(out), "--devices", "cpu:2",
                 env={"EFFNET_TEST_KILL_WORKER": "1:4"})
    err = res.stderr.decode()
    assert res.returncode == 1, err  # img005.png failed, nothing else
    assert "worker 1 (cpu) was killed by SIGKILL; restarting it after 1 s (restart 1 of 3) to redo 2 inputs in " \
           "1 unfinished shard; 2 finished shards of its partition kept" in err
    assert err.count("img005.png: ") == 1  # reported once, not again by the replacement
    assert err.strip().splitlines()[-1].startswith("effnet: embedded 12 images (1 failed) in "), err
    assert len(err.strip().splitlines()) == 3, err  # the failure, the restart, the summary: no warnings
    _same_embeddings(out, tmp_path / "ref")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and not p.name.startswith(".lock")]


@pytest.mark.slow
def test_a_partition_that_keeps_dying_names_its_device_and_inputs_and_resume_finishes(b0_small_dir: Path,
                                                                                      tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 12)
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "0", "--shard-size", "2"]
    assert run(["embed", *common, "--output-dir", str(tmp_path / "ref")]).exit_code == 0
    out = tmp_path / "out"
    # Every worker of partition 1 dies as soon as it has planned its shards: no restart can help.
    res = effnet("embed", *common, "--output-dir", str(out), "--devices", "cpu:2",
                 env={"EFFNET_TEST_KILL_WORKER": "1:0:99"})
    lines = res.stderr.decode().strip().splitlines()
    assert res.returncode == 1, lines
    assert [line.split(" (restart ")[1].split(")")[0] for line in lines[:-1]] == ["1 of 3", "2 of 3", "3 of 3"], lines
    imgs = tmp_path / "imgs"
    assert lines[-1] == (f"effnet: worker 1 (cpu) was killed by SIGKILL (4 times in a row without finishing an input; "
                         f"in flight: {imgs / 'img001.png'}, {imgs / 'img003.png'}); finished shards are kept: "
                         f"rerun the same command with --resume to finish {out}."), lines
    assert len(list(out.glob("_done_emb_p000of002_*.json"))) == 3  # the other partition finished
    assert not list(out.glob("_done_emb_p001of002_*.json"))

    resumed = effnet("embed", *common, "--output-dir", str(out), "--devices", "cpu:2", "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()
    _same_embeddings(out, tmp_path / "ref")
