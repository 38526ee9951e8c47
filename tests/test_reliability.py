"""Messy inputs, interruptions and hostile weight files, through the real commands."""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import default_sigint, effnet


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height pixels: a decompression bomb without the memory."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


def build_corpus(root: Path, photo: Path) -> tuple[list[Path], dict[Path, str]]:
    """Every awkward case of a real photo folder: (good files, {bad file: expected reason fragment})."""
    root.mkdir(parents=True, exist_ok=True)
    base = Image.open(photo).convert("RGB").resize((96, 80))
    good: list[Path] = []

    def keep(name: str, img: Image.Image, **kwargs) -> None:
        path = root / name
        img.save(path, **kwargs)
        good.append(path)

    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    keep("alpha.png", rgba)
    keep("deep16.png", Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)))
    keep("gray.png", base.convert("L"))
    keep("palette.png", base.convert("P", palette=Image.Palette.ADAPTIVE))
    keep("cmyk.jpg", base.convert("CMYK"), format="JPEG")
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    keep("anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=40)
    keep("anim.webp", frames[0], save_all=True, append_images=frames[1:], duration=40)
    exif = Image.Exif()
    exif[0x0112] = 6
    keep("phone.jpg", base, format="JPEG", exif=exif)
    keep("dot.png", Image.new("RGB", (1, 1), (10, 200, 30)))
    keep("with space.jpg", base, format="JPEG")
    keep("ünïcødé 猫.jpg", base, format="JPEG")
    keep("line\nbreak.jpg", base, format="JPEG")
    unreadable = root / "locked.jpg"
    base.save(unreadable, format="JPEG")
    os.chmod(unreadable, 0)

    bad: dict[Path, str] = {}
    full = photo.read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    bad[root / "truncated.jpg"] = "truncated JPEG"
    (root / "zero.jpg").write_bytes(b"")
    bad[root / "zero.jpg"] = "empty file"
    (root / "notes.jpg").write_text("this is not an image\n")
    bad[root / "notes.jpg"] = "not an image (text file)"
    (root / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    bad[root / "bomb.png"] = "above the 89,478,485-pixel limit; raise it with --max-pixels"
    bad[root / "missing.jpg"] = "no such file"
    if os.geteuid() == 0:  # root reads a mode-000 file anyway: then it is simply a good file
        good.append(unreadable)
    else:
        bad[unreadable] = "permission denied"
    loop = root / "loop"
    loop.mkdir()
    (loop / "again").symlink_to(root, target_is_directory=True)  # a directory loop through a symlink
    return good, bad


def _stdin(paths: list[Path]) -> bytes:
    return b"\0".join(os.fsencode(p) for p in paths) + b"\0"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], dict[Path, str]]:
    from tests.conftest import PHOTOS

    root = tmp_path_factory.mktemp("corpus")
    good, bad = build_corpus(root / "photos", PHOTOS[2])
    return root / "photos", good, bad


def test_classify_accounts_for_every_input(b0_small_dir: Path, corpus) -> None:
    root, good, bad = corpus
    # The directory (walked, loop and all) plus the missing path, given through stdin with -0.
    proc = effnet("classify", "-", "-0", "--model", str(b0_small_dir), "-f", "jsonl", "-j", "2", "-b", "4",
                  stdin=_stdin([root, root / "missing.jpg"]))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    by_path = {Path(r["path"]): r for r in records}
    assert len(records) == len(by_path) == len(good) + len(bad)  # each input exactly once, loop or not
    for path in good:
        assert by_path[path].get("predictions"), f"{path.name}: {by_path[path]}"
    for path, fragment in bad.items():
        assert fragment in by_path[path]["error"], by_path[path]
        assert f"{path}: " in err
    lines = err.strip().splitlines()
    assert len(lines) == len(bad) + 1  # one line per bad file and the summary, nothing else
    assert lines[-1].startswith(f"effnet: classified {len(good) + len(bad)} images ({len(bad)} failed) in ")


def test_embed_accounts_for_every_input(b0_small_dir: Path, corpus, tmp_path: Path) -> None:
    root, good, bad = corpus
    out = tmp_path / "f.npy"
    proc = effnet("embed", str(root), str(root / "missing.jpg"), "-o", str(out), "--model", str(b0_small_dir), "-j", "2")
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    manifest = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    rows = [r["row"] for r in manifest if r["row"] is not None]
    assert rows == list(range(len(good))) and np.load(out).shape[0] == len(good)
    errors = {Path(r["path"]): r["error"] for r in manifest if r["row"] is None}
    assert set(errors) == set(bad) and all(bad[p] in errors[p] for p in bad)


@pytest.mark.slow
def test_pixel_limit_can_be_raised(b0_small_dir: Path, photos: list[Path]) -> None:
    small = effnet("classify", str(photos[0]), "--model", str(b0_small_dir), "--max-pixels", "1000", "-f", "jsonl")
    assert small.returncode == 1 and "raise it with --max-pixels" in json.loads(small.stdout)["error"]
    raised = effnet("classify", str(photos[0]), "--model", str(b0_small_dir), "--max-pixels", "100000000", "-f", "jsonl")
    assert raised.returncode == 0 and "predictions" in json.loads(raised.stdout)


def _many_images(directory: Path, n: int) -> list[Path]:
    directory.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = directory / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    (directory / "img007.png").write_bytes(b"broken")  # a failure in the middle must survive resume too
    return paths


@pytest.mark.slow
def test_embed_killed_with_sigkill_resumes_to_the_uninterrupted_result(b0_small_dir: Path, tmp_path: Path) -> None:
    images = _many_images(tmp_path / "imgs", 48)
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "0"]
    reference = tmp_path / "ref.npy"
    assert effnet("embed", *common, "-o", str(reference)).returncode == 1

    out = tmp_path / "run.npy"
    partial = tmp_path / "run.jsonl.partial"
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "embed", *common, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if partial.exists() and partial.read_text().count("\n") >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the final file appears only when the run is complete"
    done_before = partial.read_text().count("\n")
    assert 10 <= done_before < len(images)

    resumed = effnet("embed", *common, "-o", str(out), "--resume")
    assert resumed.returncode == 1, resumed.stderr.decode()  # img007 is broken in both runs
    assert out.with_suffix(".jsonl").read_text() == reference.with_suffix(".jsonl").read_text()
    np.testing.assert_array_equal(np.load(out), np.load(reference))
    assert not list(tmp_path.glob("*.partial"))


def test_classify_ctrl_c_flushes_what_was_computed(b0_dir: Path, tmp_path: Path) -> None:
    _many_images(tmp_path / "imgs", 200)
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "classify", str(tmp_path / "imgs"), "--model",
                             str(b0_dir), "-f", "json", "-b", "2", "-j", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    first = os.read(proc.stdout.fileno(), 1)  # unbuffered: the JSON array has begun, results are flowing
    assert first == b"["
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err and b"interrupted" in err
    records = json.loads(first + rest)  # still one valid JSON document
    assert 0 < len(records) < 200
    assert all("predictions" in r or "error" in r for r in records)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PICKLE_RAN_CODE",))


def test_code_carrying_pickle_is_refused_by_every_loading_path(tmp_path: Path, monkeypatch, b0_small_dir: Path,
                                                                 photos: list[Path]) -> None:
    from effnet_cli import EfficientNetConfig, load_pretrained
    from effnet_cli.errors import UnsafeCheckpointError
    from effnet_cli.hub import read_state_dict

    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"classifier.weight": _RunsCode()})
    for name in ("evil.bin", "evil.pth", "evil.pt", "evil.ckpt", "evil"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(UnsafeCheckpointError):
            read_state_dict(tmp_path / name)
    model_dir = tmp_path / "evil-model"
    model_dir.mkdir()
    EfficientNetConfig.from_variant("b0").to_json_file(model_dir / "config.json")
    (model_dir / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(UnsafeCheckpointError):
        load_pretrained(model_dir)
    proc = effnet("classify", str(photos[0]), "--model", str(model_dir))
    assert proc.returncode == 1 and b"refused" in proc.stderr and b"Traceback" not in proc.stderr
    for source in ("torchvision", "timm", "efficientnet_pytorch", "hf", None):
        args = ["convert", str(tmp_path / "evil.pth"), "-o", str(tmp_path / f"out-{source}")]
        if source:
            args += ["--from", source]
        proc = effnet(*args, env={"PWD": str(tmp_path)})
        assert proc.returncode != 0 and b"Traceback" not in proc.stderr, proc.stderr.decode()
    assert not (tmp_path / "PICKLE_RAN_CODE").exists()
    assert not Path("PICKLE_RAN_CODE").exists()
