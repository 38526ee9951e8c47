"""Ctrl-C at any moment of a run: stdout stays a valid document, the summary counts what it holds.

A KeyboardInterrupt can arrive between any two bytecodes, including inside ``stream.write``
after the bytes went out; the writers hold it to the end of the batch they are writing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet_cli.interrupts import interrupts_held
from tests.cli_helpers import default_sigint


def test_an_interrupt_inside_the_block_is_raised_at_its_end() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal has been delivered; the block carries on
            steps.append("finished")
    assert steps == ["finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_without_an_interrupt_leaves_no_trace() -> None:
    with interrupts_held():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_or_custom_sigint_is_left_alone() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_held():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(1)
    for i in range(400):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(directory / f"img{i:03d}.png")
    (directory / "img005.png").write_bytes(b"broken")  # error records must stay whole too
    return directory


def _interrupted_run(model: Path, images: Path, fmt: str, delay: float) -> tuple[int, str, str]:
    """Start classify, wait for its first output byte, then ``delay`` seconds more, then Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "classify", str(images), "--model", str(model),
                             "-f", fmt, "-b", "1", "-j", "1", "--backend", "torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    first = os.read(proc.stdout.fileno(), 1)  # the first record is on its way: the run is in full flow
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, (first + out).decode("utf-8"), err.decode("utf-8", "replace")


def _records(fmt: str, text: str) -> int:
    """How many images the output holds, parsing it strictly as its format."""
    if fmt == "json":
        return len(json.loads(text))
    if fmt == "jsonl":
        assert text.endswith("\n")
        return len([json.loads(line) for line in text.splitlines()])
    rows = list(csv.reader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"))
    assert rows[0][:6] == ["path", "rank", "index", "label", "score", "error"]
    assert all(len(row) == len(rows[0]) for row in rows)  # no row cut short
    return len({row[0] for row in rows[1:]})


@pytest.mark.slow
@pytest.mark.parametrize("fmt, moments", [("json", 20), ("jsonl", 4), ("csv", 4), ("tsv", 4)])
def test_ctrl_c_at_random_moments_leaves_a_valid_document(b0_small_dir: Path, many_images: Path, fmt: str,
                                                          moments: int) -> None:
    rng = random.Random(f"ctrl-c {fmt}")
    for _ in range(moments):
        delay = rng.uniform(0.0, 1.5)
        code, out, err = _interrupted_run(b0_small_dir, many_images, fmt, delay)
        assert code == 130, f"delay {delay:.3f}: {err}"
        assert "Traceback" not in err
        count = _records(fmt, out)
        summary = re.search(r"interrupted after (\d+) images?", err)
        assert summary, err
        assert int(summary.group(1)) == count, f"delay {delay:.3f}: summary {summary.group(0)!r}, output {count}"
        # json/jsonl's first byte is a record's; csv/tsv's is the header, which a Ctrl-C may follow at once
        assert (0 if fmt in ("csv", "tsv") else 1) <= count < 400
