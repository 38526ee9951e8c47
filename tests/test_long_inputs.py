"""Long inputs: memory that does not grow with the number of inputs, and stdin read as it arrives.

The memory figures are the peak of the summed resident memory of the whole process tree (the
command, its decode workers, the fork server), sampled from /proc while the command runs. A tiny
seeded model at 32 px keeps 100,000 forward passes to seconds; the images are 16×16 PNGs.
"""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_helpers import effnet
from tests.conftest import randomize

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process memory from /proc")

# Peak memory over 100,000 inputs may exceed the peak over 10,000 by at most this fraction.
FLAT = 0.10
DIRS, PER_DIR = 100, 1000  # 100,000 images, 1,000 a directory


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc/PID/stat (ppid is the field after the state)."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(name))
    return tree


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0  # gone between the listing and the read


def _tree_rss(root: int) -> int:
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_bytes(pid)
        todo.extend(tree.get(pid, ()))
    return total


def peak_rss(args: list[str], *, stdin: Path | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Run ``effnet ARGS`` to the end; the peak summed RSS of its process tree (bytes) and its stderr."""
    with open(stdin or os.devnull, "rb") as source:
        proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", *args], stdin=source,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert proc.returncode == 0, err
    return peak, err


def _png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class checkpoint of a tiny architecture (width 0.25, 32 px) with seeded random weights."""
    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.core.loading import default_processor
    from effnet_cli.hub import save_pretrained

    config = EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320, image_size=32,
                                id2label={i: f"class{i}" for i in range(10)})
    model = randomize(EfficientNetForImageClassification(config), seed=5, scale=1.8).eval()
    directory = tmp_path_factory.mktemp("tiny")
    save_pretrained(model, directory, default_processor(config))
    return directory


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 folders d000 … d099 of 1,000 16×16 PNGs each (eight different images, written once each)."""
    root = tmp_path_factory.mktemp("many")
    blobs = [_png(seed) for seed in range(8)]
    for d in range(DIRS):
        folder = root / f"d{d:03d}"
        folder.mkdir()
        for i in range(PER_DIR):
            (folder / f"i{i:04d}.png").write_bytes(blobs[(d + i) % 8])
    return root


def _folders(root: Path, count: int) -> list[str]:
    return [str(root / f"d{d:03d}") for d in range(count // PER_DIR)]


def _warm_export(tiny_dir: Path, image: Path) -> None:
    """Export the model for ONNX Runtime once, so the measured runs do not include the export (which loads torch)."""
    done = effnet("classify", str(image), "--model", str(tiny_dir), "--backend", "onnxruntime", "-f", "jsonl")
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["classify", "embed"])
def test_memory_over_100k_inputs_is_flat(command: str, tiny_dir: Path, many_images: Path,
                                         tmp_path: Path) -> None:
    """Peak memory of a run over 100,000 images is within 10% of the peak over 10,000: classify to stdout
    (jsonl) and embed --output-dir, decode workers included."""
    _warm_export(tiny_dir, many_images / "d000" / "i0000.png")
    peaks = {}
    for count in (10_000, 100_000):
        args = [command, *_folders(many_images, count), "--model", str(tiny_dir), "--backend", "onnxruntime",
                "--batch-size", "64"]
        args += ["-f", "jsonl"] if command == "classify" else ["--output-dir", str(tmp_path / f"out{count}")]
        peaks[count], err = peak_rss(args)
        assert f"{count} images" in err
    if command == "embed":
        import numpy as np

        rows = sum(len(np.load(f)) for f in (tmp_path / "out100000").glob("emb_*.npy"))
        assert rows == 100_000
    grown = peaks[100_000] / peaks[10_000] - 1
    assert grown <= FLAT, f"peak RSS {peaks[10_000] / 2**20:.0f} MB at 10k, {peaks[100_000] / 2**20:.0f} MB at 100k"


@pytest.mark.slow
def test_memory_over_100k_inputs_is_flat_with_pytorch(tiny_dir: Path, many_images: Path) -> None:
    """The same for classify to stdout with --backend torch, whose decode workers are torch's DataLoader."""
    peaks = {}
    for count in (10_000, 100_000):
        peaks[count], err = peak_rss(["classify", *_folders(many_images, count), "--model", str(tiny_dir),
                                      "--backend", "torch", "--batch-size", "64", "-f", "jsonl"])
        assert f"{count} images" in err
    assert peaks[100_000] / peaks[10_000] - 1 <= FLAT


def test_first_record_comes_before_stdin_ends(tiny_dir: Path, tmp_path: Path) -> None:
    """`producer | effnet classify -`: the first path's record is on stdout while stdin is still open."""
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(_png(1))
    second.write_bytes(_png(2))
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "classify", "-", "--model", str(tiny_dir),
                             "--backend", "torch", "-f", "jsonl", "--top-k", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(f"{first}\n".encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no record within 120 s while stdin stayed open"
        record = json.loads(proc.stdout.readline())
        assert record["path"] == str(first) and len(record["predictions"]) == 1
        assert proc.poll() is None  # still running: waiting for more paths
        proc.stdin.write(f"{second}\n".encode())
        proc.stdin.close()
        rest, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert [json.loads(line)["path"] for line in rest.decode().splitlines()] == [str(second)]
    assert "classified 2 images" in err.decode()


@pytest.mark.slow
def test_a_million_stdin_lines_are_not_read_whole(tiny_dir: Path, tmp_path: Path) -> None:
    """A stdin list of a million lines (three files named over and over) costs no more memory than one of
    10,000: the list is read as it is used, never held whole, and each file is classified once."""
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(_png(ord(name[0])))
    _warm_export(tiny_dir, tmp_path / "a.png")
    peaks = {}
    for lines in (10_000, 1_000_000):
        listing = tmp_path / f"list{lines}.txt"
        listing.write_bytes(b"a.png\nb.png\nc.png\n" * (lines // 3))
        # Decoding in the process itself (-j 0): with workers, whether the short list was read to its end
        # before they start decides how they start (fork or fork server), and that would be compared instead.
        peaks[lines], err = peak_rss(["classify", "-", "--model", str(tiny_dir), "--backend", "onnxruntime",
                                      "-f", "jsonl", "-j", "0"], stdin=listing, cwd=tmp_path)
        assert "classified 3 images" in err
    # Read whole, the million lines cost ~50 MB more (the bytes, the text, a list of a million names): +20%.
    assert peaks[1_000_000] / peaks[10_000] - 1 <= FLAT, \
        f"{peaks[10_000] / 2**20:.0f} MB for 10,000 lines, {peaks[1_000_000] / 2**20:.0f} MB for 1,000,000"


def test_chunks_come_at_the_limit_when_the_source_pauses_and_at_its_end() -> None:
    """A chunk is handed over full, or early when the source pauses; an error comes after the items before it."""
    from effnet_cli.data.chunks import Chunks

    assert [len(c) for c in Chunks(iter(range(10)), 4)] == [4, 4, 2]

    def trickle():
        yield from range(3)
        time.sleep(1.0)  # a pipeline that pauses: what came so far must not wait for a full chunk
        yield from range(3, 5)
        raise OSError("stdin went away")

    chunks = Chunks(trickle(), 100, pause_s=0.1)
    assert next(chunks) == [0, 1, 2] and not chunks.ended
    assert next(chunks) == [3, 4] and chunks.ended and chunks.taken == 5
    with pytest.raises(OSError, match="stdin went away"):
        next(chunks)


def test_duplicates_are_dropped_across_the_compact_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the keys of the inputs taken move into the sorted array, a path named again is still dropped."""
    from effnet_cli.data import inputs

    monkeypatch.setattr(inputs, "_SPILL", 4)
    names = [f"img{i}.png" for i in range(10)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    listed = [str(tmp_path / n) for n in names]
    again = [str(tmp_path / ".." / tmp_path.name / n) for n in reversed(names)]  # the same files by other paths
    assert inputs.discover_inputs([*listed, *again, str(tmp_path)]) == listed


@pytest.mark.parametrize("null", [False, True])
def test_stdin_names_cut_by_read_blocks_come_whole(null: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stdin read in small blocks: names (non-UTF-8 bytes included) that straddle two blocks come out whole."""
    from effnet_cli.data import inputs

    monkeypatch.setattr(inputs, "_BLOCK", 3)
    names = [b"first.png", b"caf\xe9 photo.jpg", b"x", b"dir/last.png"]
    sep = b"\0" if null else b"\r\n"
    data = sep.join(names) + (b"" if null else b"\n\n")
    assert list(inputs._stdin_names(None, io.BytesIO(data), null)) == [os.fsdecode(n) for n in names]
