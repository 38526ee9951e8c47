"""SIGKILL at random moments, again and again: the resumed output is bit for bit an undisturbed run's.

Each test kills the same output's run several times at random delays (a loop over moments, not
one fixed one: before anything is written, mid-batch, mid-publication, after the end), resumes it
each time, and finally compares with an uninterrupted run. The images and the fine-tuning data
come from the Ctrl-C and fine-tuning tests.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_finetune import TINY, _cli_args, assert_same_weights, dataset, reference  # noqa: F401 (fixtures)
from tests.test_interrupts import many_images  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
KILLS = 4  # kills per output, each at its own random moment
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _effnet(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "effnet_cli", *args], capture_output=True, env=ENV, timeout=600)


def _killed_at(args: list[str], delay: float) -> int | None:
    """Start ``effnet ARGS``, SIGKILL it after ``delay`` seconds; its exit status when it ended first, else None."""
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None


def _timed(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = _effnet(args)
    return done, time.monotonic() - started


def _final_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial")}


def _kill_and_resume(args: list[str], out: Path, reference: dict[str, bytes], seconds: float, seed: str) -> None:
    """Kill ``args`` KILLS times at random moments within ``seconds`` (the run's length), resuming each
    time; check what is under a final name after every kill, then finish and compare."""
    rng = random.Random(seed)
    for attempt in range(KILLS):
        delay = rng.uniform(0.2, seconds)
        code = _killed_at([*args, *(["--resume"] if attempt else [])], delay)
        assert code in (None, 0, 1), f"kill {attempt} at {delay:.2f} s: the run itself failed with {code}"
        for name, data in _final_files(out).items():  # whatever is published is whole
            assert data == reference[name], f"kill {attempt} at {delay:.2f} s: {name} is not an undisturbed run's"
    done = _effnet([*args, "--resume"])
    assert done.returncode == 1, done.stderr.decode()  # img005.png is broken, in every run
    assert _final_files(out) == reference
    assert not [p for p in out.iterdir() if p.name.endswith((".part", ".partial"))]


def _embed_args(model: Path, images: Path) -> list[str]:
    return ["embed", str(images), "--model", str(model), "-b", "4", "-j", "0", "--backend", "torch", "-q"]


def test_embed_o_killed_again_and_again_resumes_to_the_same_bytes(b0_small_dir: Path, many_images: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    done, seconds = _timed([*_embed_args(b0_small_dir, many_images), "-o", str(tmp_path / "ref" / "feats.npy")])
    assert done.returncode == 1, done.stderr.decode()
    reference = _final_files(tmp_path / "ref")
    assert set(reference) == {"feats.npy", "feats.jsonl"}
    out = tmp_path / "run"
    out.mkdir()
    _kill_and_resume([*_embed_args(b0_small_dir, many_images), "-o", str(out / "feats.npy")], out, reference,
                     seconds, "embed -o")


def test_embed_output_dir_killed_again_and_again_resumes_to_the_same_bytes(b0_small_dir: Path, many_images: Path,
                                                                           tmp_path: Path) -> None:
    shards = ["--shard-size", "60"]
    done, seconds = _timed([*_embed_args(b0_small_dir, many_images), *shards, "--output-dir", str(tmp_path / "ref")])
    assert done.returncode == 1, done.stderr.decode()
    reference = _final_files(tmp_path / "ref")
    assert len([n for n in reference if n.startswith("emb_")]) == 7
    _kill_and_resume([*_embed_args(b0_small_dir, many_images), *shards, "--output-dir", str(tmp_path / "run")],
                     tmp_path / "run", reference, seconds, "embed --output-dir")


def _finetune_args(args: list[str], out: Path) -> list[str]:
    """The command that continues ``out``: --resume while it holds a checkpoint (the run's own rule)."""
    return [*args, "--resume"] if (out / "checkpoint.pt").exists() else args


def test_finetune_killed_again_and_again_resumes_to_the_same_weights(reference, dataset, b0_small_dir: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["finetune", str(dataset), "-o", str(out), "--model", str(b0_small_dir), *_cli_args(TINY)]
    started = time.monotonic()
    timing = ["finetune", str(dataset), "-o", str(tmp_path / "timing"), "--model", str(b0_small_dir), *_cli_args(TINY)]
    assert _killed_at(timing, 600) == 0  # an undisturbed run, to know how long one takes
    seconds = time.monotonic() - started
    rng = random.Random("finetune")
    for attempt in range(KILLS):
        delay = rng.uniform(0.2, seconds)
        code = _killed_at(_finetune_args(args, out), delay)
        assert code in (None, 0), f"kill {attempt} at {delay:.2f} s: the run itself failed with {code}"
        if (out / "model.safetensors").exists():  # published only whole
            assert_same_weights(out, reference[0])
        if code == 0:
            break
    if not (out / "model.safetensors").exists() or (out / "checkpoint.pt").exists():
        done = _effnet(_finetune_args(args, out))
        assert done.returncode == 0, done.stderr.decode()
    assert_same_weights(out, reference[0])
    assert not (out / "checkpoint.pt").exists()
