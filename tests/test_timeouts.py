"""Time limits and non-files: an input that hangs or decodes for ever costs its own record, not the run.

Both loaders (the torch DataLoader one and the torch-free pool), in worker processes and in process:
a read that blocks, a read that ignores signals (the parent's backstop kills and replaces the worker,
and reaps it), a very large PNG under a small limit. Through the command line: a folder of photos
with such inputs, a FIFO in the folder, with the PyTorch backend and with ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet_cli.data import limits
from effnet_cli.data.limits import call_with_time_limit, check_timeout, timeout_reason
from effnet_cli.errors import InputError

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# inputs that hang
# --------------------------------------------------------------------------- #


def small(path: Path, red: int, size=(6, 6)) -> str:
    Image.new("RGB", size, (red, 50, 100)).save(path)
    return str(path)


def big_png(path: Path) -> str:
    """A 9000×9000 16-bit PNG: under a megabyte on disk, but 81 megapixels to inflate and scale to 8 bits."""
    values = np.zeros((9000, 9000), np.uint16)
    values[::7, ::3] = 40000
    Image.fromarray(values).save(path, compress_level=1)
    return str(path)


class HangOn:
    """Test transform: blocks for ever on images of one size, the way a hung read would.

    ``how`` "read" blocks in read(2) on a pipe nobody writes, which a signal interrupts (as a
    read of a network file does); "uninterruptible" first blocks every signal, as a process in the
    kernel's uninterruptible sleep ignores them, so only SIGKILL ends it. Every call leaves a marker
    file named after its process id, so the test knows every process that decoded.
    """

    def __init__(self, size: tuple[int, int], how: str, markers: Path, tensors: bool = False) -> None:
        self.size, self.how, self.markers, self.tensors = size, how, markers, tensors

    def __call__(self, image: Image.Image):
        (self.markers / f"{os.getpid()}-{time.monotonic_ns()}").touch()
        if image.size == self.size:
            if self.how == "read":
                readable, _writable = os.pipe()
                os.read(readable, 1)
            signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
            while True:
                time.sleep(3600)
        pixels = np.asarray(image.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255
        if self.tensors:
            import torch

            return torch.from_numpy(pixels)
        return pixels


def loader_of(kind: str):
    if kind == "torch":
        import torch  # noqa: F401 - imported before any timer runs: an import cut short by one breaks torch

        from effnet_cli.data.loader import iter_batches
    else:
        from effnet_cli.data.pool import iter_batches
    return iter_batches


def collect(batches) -> tuple[dict[int, float], dict[int, str]]:
    """(red channel mean ×255 by position, error by position)."""
    rows, errors = {}, {}
    for batch in batches:
        values = np.asarray(batch.pixel_values)
        for pos, row, err in batch.outcomes():
            if row is None:
                errors[pos] = err
            else:
                rows[pos] = round(float(values[row][0].mean()) * 255)
    return rows, errors


def gone(pids: set[int], wait_s: float = 10.0) -> bool:
    """True once none of ``pids`` exists any more, not even as a zombie waiting to be reaped."""
    deadline = time.monotonic() + wait_s
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def marker_pids(markers: Path) -> set[int]:
    return {int(name.split("-")[0]) for name in os.listdir(markers)} - {os.getpid()}


@pytest.mark.parametrize("kind", ["torch", "pool"])
@pytest.mark.parametrize("how", ["read", "uninterruptible"])
def test_an_input_that_hangs_gets_a_record_and_the_run_goes_on(tmp_path, kind, how):
    markers = tmp_path / "markers"
    markers.mkdir()
    paths = [small(tmp_path / f"{i}.png", 10 * i) for i in range(8)]
    paths[5] = small(tmp_path / "stuck.png", 0, size=(13, 7))
    transform = HangOn((13, 7), how, markers, tensors=kind == "torch")
    limit = 0.5
    started = time.monotonic()
    rows, errors = collect(loader_of(kind)(paths, transform, batch_size=3, workers=2, decode_timeout=limit))
    took = time.monotonic() - started
    assert errors == {5: timeout_reason(limit)} == {5: "decoding took longer than the --decode-timeout of 0.5 s"}
    assert rows == {i: 10 * i for i in range(8) if i != 5}
    # The timer ends a read in about the limit; a process that ignores it is killed at the backstop.
    bound = limit + 20 if how == "read" else limits.backstop_after(limit) + 30
    assert took < bound
    # Every worker, the one killed for hanging included, has exited and been reaped: no zombie, no orphan.
    assert marker_pids(markers) and gone(marker_pids(markers))


@pytest.mark.parametrize("kind", ["torch", "pool"])
def test_a_blocking_read_in_process_is_ended_by_the_limit(tmp_path, kind):
    markers = tmp_path / "markers"
    markers.mkdir()
    paths = [small(tmp_path / f"{i}.png", 10 * i) for i in range(4)]
    paths[1] = small(tmp_path / "stuck.png", 0, size=(13, 7))
    transform = HangOn((13, 7), "read", markers, tensors=kind == "torch")
    rows, errors = collect(loader_of(kind)(paths, transform, batch_size=4, workers=0, decode_timeout=0.3))
    assert errors == {1: timeout_reason(0.3)} and rows == {0: 0, 2: 20, 3: 30}
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # this process's handler is as it was


@pytest.mark.parametrize("kind", ["torch", "pool"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_very_large_png_past_a_small_limit(tmp_path, kind, workers):
    from effnet_cli.data.decode import open_image

    huge = big_png(tmp_path / "huge.png")
    took = time.monotonic()
    open_image(huge)
    took = time.monotonic() - took
    # A third of what the decode takes here, so the record is no accident; enough for a small image
    # to decode and preprocess in a fresh worker on a busy machine.
    limit = round(took / 3, 2)
    assert limit >= 0.2, f"the large PNG decoded in {took:.2f} s: too fast for this test"
    paths = [small(tmp_path / f"{i}.png", 10 * i) for i in range(4)] + [huge]

    def transform(image):
        return np.asarray(image.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255

    if kind == "torch":
        from effnet_cli.core.processor import EfficientNetImageProcessor

        transform = EfficientNetImageProcessor.from_dict(
            {"do_resize": True, "size": {"height": 8, "width": 8}, "do_normalize": False}).preprocess_pil
    else:
        from effnet_cli.core.numpy_pixels import PixelPipeline

        transform = PixelPipeline.from_processor({"do_resize": True, "size": {"height": 8, "width": 8},
                                                  "do_normalize": False})
    transform(Image.new("RGB", (6, 6)))  # its first use imports libraries: not what this test times
    rows, errors = collect(loader_of(kind)(paths, transform, batch_size=2, workers=workers, decode_timeout=limit))
    assert errors == {4: timeout_reason(limit)}
    assert sorted(rows) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- #
# the timer itself
# --------------------------------------------------------------------------- #


def test_the_timer_puts_back_a_previous_handler_and_timer():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.6)
        started = time.monotonic()
        assert call_with_time_limit(0.2, lambda x: x + 1, 1) == 2
        with pytest.raises(limits.TimeLimitExceeded):
            call_with_time_limit(0.1, time.sleep, 5)
        assert 0.08 < time.monotonic() - started < 0.55 and not fired
        time.sleep(1.0)  # the caller's own timer still fires, once, at about its time
        assert len(fired) == 1 and fired[0] - started < 0.9
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_import_is_never_cut_short(tmp_path, monkeypatch):
    """A limit that passes while a module is being imported waits for the import to finish."""
    (tmp_path / "slow_module_for_the_timer.py").write_text("import time\ntime.sleep(0.4)\nVALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def use_it():
        import slow_module_for_the_timer

        return slow_module_for_the_timer.VALUE

    with pytest.raises(limits.TimeLimitExceeded):
        call_with_time_limit(0.1, lambda: use_it() + time.sleep(5))
    assert sys.modules["slow_module_for_the_timer"].VALUE == 7  # imported whole, then the limit applied


def test_no_timer_outside_the_main_thread():
    """Only the main thread receives signals: a library caller's thread decodes without the limit."""
    got = []
    thread = threading.Thread(target=lambda: got.append(call_with_time_limit(0.01, lambda: time.sleep(0.1) or 7)))
    thread.start()
    thread.join()
    assert got == [7]


def test_limits_a_user_gives():
    assert check_timeout(None) is None and check_timeout(0) is None and check_timeout(2) == 2.0
    for bad in (-1, float("nan"), float("-inf")):
        with pytest.raises(InputError, match="--decode-timeout must be 0"):
            check_timeout(bad)
