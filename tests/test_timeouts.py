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


# The limit the large PNG is tried against: about a hundred times what a small image takes to decode and
# preprocess, and well under the large PNG's decode (0.4 to 5 s on the project's busy 2-core machine).
LIMIT = 0.15


def big_png(path: Path) -> str:
    """A 9000×9000 RGBA PNG: 1.5 MB on disk, but 324 MB to inflate and 81 megapixels to convert to RGB.

    It decoded in 1.3 s on an idle 2-core machine, nine times :data:`LIMIT` (a 16-bit grey one of the
    same size took 0.22 s there, too close to the limit to tell it from a slow photo).
    """
    values = np.zeros((9000, 9000, 4), np.uint8)
    values[::7, ::3] = (200, 100, 50, 255)
    values[..., 3] = 255
    Image.fromarray(values, "RGBA").save(path, compress_level=1)
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
    assert took > 2 * LIMIT, f"the large PNG decoded in {took:.2f} s: too fast for this test's limit"
    limit = LIMIT
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


# --------------------------------------------------------------------------- #
# through the command line: a read that blocks in the kernel, via an LD_PRELOAD shim
# --------------------------------------------------------------------------- #

# read(2) on a file whose path contains $EFFNET_TEST_HANG blocks, as on a stale network mount or a
# FUSE file system that stopped answering. By default it waits in pause(), which a signal interrupts
# (EINTR, as NFS "intr" and FUSE reads are); with EFFNET_TEST_HANG_DEAF=1 it first blocks every
# signal, like a process in uninterruptible sleep: only SIGKILL ends it.
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ssize_t (*real_read)(int, void *, size_t);

static int hangs(int fd) {
    const char *marker = getenv("EFFNET_TEST_HANG");
    char link[64], target[4096];
    if (marker == NULL || *marker == 0) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return strstr(target, marker) != NULL;
}

ssize_t read(int fd, void *buf, size_t count) {
    if (real_read == NULL) real_read = (ssize_t (*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
    if (hangs(fd)) {
        const char *deaf = getenv("EFFNET_TEST_HANG_DEAF");
        if (deaf != NULL && strcmp(deaf, "1") == 0) {
            sigset_t all;
            sigfillset(&all);
            sigprocmask(SIG_BLOCK, &all, NULL);
            for (;;) sleep(1000);
        }
        pause();
        errno = EINTR;
        return -1;
    }
    return real_read(fd, buf, count);
}
"""


@pytest.fixture(scope="module")
def hang_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip("needs a C compiler and Linux for the LD_PRELOAD shim")
    directory = tmp_path_factory.mktemp("shim")
    (directory / "hang.c").write_text(SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(directory / "hang.so"), str(directory / "hang.c"),
                    "-ldl"], check=True, capture_output=True)
    return directory / "hang.so"


@pytest.fixture(scope="module")
def onnx_small(b0_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded 64×64 b0 exported for ONNX Runtime: `--model` of it runs the torch-free lean path."""
    pytest.importorskip("onnxruntime")
    target = tmp_path_factory.mktemp("export") / "onnx"
    done = subprocess.run([sys.executable, "-m", "effnet_cli", "export", str(b0_small_dir), "-o", str(target)],
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    return target


def _leftovers(token: str) -> list[int]:
    """Processes still alive (zombies included) that carry ``token`` in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _folder(root: Path, photos: list[Path]) -> tuple[Path, list[str]]:
    """Photos, a very large PNG, a photo whose reads block, and a FIFO named like a photo."""
    folder = root / "folder"
    folder.mkdir()
    good = []
    for i, photo in enumerate(photos[:3]):
        shutil.copy(photo, folder / f"p{i}.jpg")
        good.append(str(folder / f"p{i}.jpg"))
    big_png(folder / "q-huge.png")
    shutil.copy(photos[0], folder / "r-stale.jpg")
    os.mkfifo(folder / "s-pipe.jpg")
    return folder, good


@pytest.mark.slow
@pytest.mark.parametrize("model", ["torch", "onnxruntime"])
@pytest.mark.parametrize("deaf", [False, True], ids=["read", "uninterruptible"])
def test_cli_a_hanging_read_and_a_huge_png_cost_their_own_records(tmp_path, photos, b0_small_dir, onnx_small,
                                                                   hang_shim, model, deaf):
    from effnet_cli.data.decode import open_image

    folder, good = _folder(tmp_path, photos)
    took = time.monotonic()
    open_image(folder / "q-huge.png")
    took = time.monotonic() - took
    assert took > 2 * LIMIT, f"the large PNG decoded in {took:.2f} s: too fast for this test's limit"
    limit = LIMIT
    token = f"effnet-timeout-test-{os.getpid()}-{model}-{deaf}"
    env = {**os.environ, "LD_PRELOAD": str(hang_shim), "EFFNET_TEST_HANG": "r-stale.jpg", "LEFTOVER_TOKEN": token,
           "EFFNET_TEST_HANG_DEAF": "1" if deaf else "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = ["--model", str(b0_small_dir), "--backend", "torch"] if model == "torch" else ["--model", str(onnx_small)]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "effnet_cli", "classify", str(folder), *args, "-f", "jsonl",
                           "--workers", "2", "--decode-timeout", str(limit)],
                          capture_output=True, env=env, timeout=600)
    took = time.monotonic() - started
    records = {r["path"]: r for r in map(json.loads, done.stdout.decode().splitlines())}
    reason = timeout_reason(limit)
    assert done.returncode == 1, done.stderr.decode()
    assert records[str(folder / "q-huge.png")]["error"] == reason
    assert records[str(folder / "r-stale.jpg")]["error"] == reason
    assert records[str(folder / "s-pipe.jpg")]["error"] == "not a regular file (named pipe)"
    assert all("error" not in records[path] and records[path]["predictions"] for path in good)
    assert len(records) == 6
    # Generous: start-up and the model dominate; the backstop adds its 2× limit + 5 s per hung worker.
    assert took < 120 + (limits.backstop_after(limit) * 3 if deaf else 0)
    # Every process of the run has exited and been reaped, the killed worker included.
    deadline = time.monotonic() + 15
    while _leftovers(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _leftovers(token) == []


@pytest.mark.slow
def test_cli_explain_ends_a_hanging_read_and_a_huge_png_at_the_limit(tmp_path, photos, b0_small_dir, hang_shim):
    """explain decodes in its own process, under the same limit: each hang costs its record, the rest is explained."""
    pytest.importorskip("pytorch_grad_cam")
    folder, good = _folder(tmp_path, photos)
    env = {**os.environ, "LD_PRELOAD": str(hang_shim), "EFFNET_TEST_HANG": "r-stale.jpg", "EFFNET_TEST_HANG_DEAF": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "heat"
    done = subprocess.run([sys.executable, "-m", "effnet_cli", "explain", str(folder), "--model", str(b0_small_dir),
                           "-o", str(out), "--decode-timeout", str(LIMIT), "-q"],
                          capture_output=True, env=env, timeout=600)
    records = {r["path"]: r for r in map(json.loads, done.stdout.decode().splitlines())}
    assert done.returncode == 1, done.stderr.decode()
    assert records[str(folder / "q-huge.png")]["error"] == timeout_reason(LIMIT)
    assert records[str(folder / "r-stale.jpg")]["error"] == timeout_reason(LIMIT)
    assert records[str(folder / "s-pipe.jpg")]["error"] == "not a regular file (named pipe)"
    for path in good:
        assert [Path(f["overlay"]).is_file() for f in records[path]["explained"]] == [True]
    assert len(records) == 6


@pytest.mark.parametrize("command", [["classify"], ["explain", "-o", "heat"]])
def test_cli_a_negative_limit_is_a_usage_error(photos, command, tmp_path):
    done = subprocess.run([sys.executable, "-m", "effnet_cli", command[0], str(photos[0]), *command[1:],
                           "--decode-timeout", "-1"], cwd=tmp_path,
                          capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    assert done.returncode == 2 and done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--decode-timeout must be 0 (no limit) or a positive number of seconds" in lines[0], lines


@pytest.mark.slow
def test_cli_device_workers_keep_the_limit(tmp_path, photos, b0_small_dir, hang_shim):
    """--devices workers get --decode-timeout through the engine spec: the hung read is in the shards' records."""
    from effnet_cli.scale.shards import read_embeddings

    folder, good = _folder(tmp_path, photos)
    os.unlink(folder / "q-huge.png")
    env = {**os.environ, "LD_PRELOAD": str(hang_shim), "EFFNET_TEST_HANG": "r-stale.jpg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "effnet_cli", "embed", str(folder), "--model", str(b0_small_dir),
                           "--backend", "torch", "--output-dir", str(tmp_path / "out"), "--devices", "cpu:1",
                           "-j", "1", "--decode-timeout", "1"], capture_output=True, env=env, timeout=600)
    assert done.returncode == 1, done.stderr.decode()
    _array, records = read_embeddings(tmp_path / "out")
    errors = {r["path"]: r.get("error") for r in records}
    assert errors[str(folder / "r-stale.jpg")] == "decoding took longer than the --decode-timeout of 1 s"
    assert errors[str(folder / "s-pipe.jpg")] == "not a regular file (named pipe)"
    assert all(errors[path] is None for path in good)
