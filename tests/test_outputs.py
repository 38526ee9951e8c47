"""The output layer: any file name, a killed or doubled run, another umask — nothing lost, mixed or clobbered.

Each test is a failure a careful user hit, run through the real commands; the
rules they check are in docs/failures.md, "Writing outputs".
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet_cli.records.pathtext import path_from_fields, split_records
from effnet_cli.scale.shards import read_embeddings
from tests.cli_helpers import effnet, run
from tests.hostile import make_hostile_corpus


def _png(seed: int) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _images(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = directory / f"img{i:03d}.png"
        path.write_bytes(_png(i))
        paths.append(path)
    return paths


def _jsonl(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")  # strict: every output must be valid UTF-8
    return [json.loads(line) for line in split_records(text)]


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a run's output but its lock file (which only says who is writing)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.endswith(".lock") and not p.name.startswith(".lock_")}


def _kill_when(proc: subprocess.Popen, ready, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------ any file name


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return make_hostile_corpus(tmp_path_factory.mktemp("hostile"), _png(7))


def _assert_clean(res) -> None:
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr


def test_hostile_names_through_embed_o_come_back_exactly(b0_small_dir: Path, hostile: list[str],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "feats.npy"
    res = run(["embed", *hostile, "--model", str(b0_small_dir), "-j", "0", "-o", str(out)])
    _assert_clean(res)
    manifest = _jsonl(out.with_suffix(".jsonl"))
    assert [path_from_fields(r) for r in manifest] == hostile
    assert np.load(out).shape == (len(hostile), 1280)
    latin1 = next(r for r in manifest if "path_bytes" in r)  # the one name that is not UTF-8
    assert base64.b64decode(latin1["path_bytes"]).endswith(b"caf\xe9 latin1.jpg")
    # No partial, no lock left; the completion marker is hidden beside the array.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".feats.npy.done.json", "feats.jsonl", "feats.npy"]


def test_hostile_names_through_per_file(b0_small_dir: Path, hostile: list[str], tmp_path: Path) -> None:
    out = tmp_path / "per"
    _assert_clean(run(["embed", *hostile, "--model", str(b0_small_dir), "-j", "0", "--per-file", str(out)]))
    manifest = _jsonl(out / "manifest.jsonl")
    assert [path_from_fields(r) for r in manifest] == hostile
    files = [os.fsdecode(base64.b64decode(r["file_bytes"])) if "file_bytes" in r else r["file"] for r in manifest]
    assert len(set(files)) == len(hostile)
    for name in files:
        assert np.load(out / name).shape == (1280,)


@pytest.mark.parametrize("devices", [None, "cpu:2"])
def test_hostile_names_through_output_dir(b0_small_dir: Path, hostile: list[str], tmp_path: Path,
                                          devices: str | None) -> None:
    out = tmp_path / "shards"
    args = ["embed", *hostile, "--model", str(b0_small_dir), "-j", "0", "--output-dir", str(out), "--shard-size", "5"]
    if devices:
        proc = effnet(*args, "--devices", devices)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    else:
        _assert_clean(run(args))
    for path in out.iterdir():
        if path.suffix in (".json", ".jsonl"):
            path.read_bytes().decode("utf-8")
    array, records = read_embeddings(out)
    assert [r["path"] for r in records] == hostile  # U+2028 and newlines included
    assert array.shape == (len(hostile), 1280)

    import pyarrow.parquet as pq
    from embedding_reader import EmbeddingReader

    metas = [row for f in sorted(out.glob("meta_*.parquet")) for row in pq.ParquetFile(f, pre_buffer=False).read(use_threads=False).to_pylist()]
    assert sorted(path_from_fields(m) for m in metas) == sorted(hostile)
    reader = EmbeddingReader(str(out), file_format="parquet_npy", meta_columns=["path", "path_bytes", "index"],
                             metadata_folder=str(out))
    (embeddings, meta), = list(reader(batch_size=100, show_progress=False))
    paths = [path_from_fields({"path": p, "path_bytes": b}) for p, b in zip(meta["path"], meta["path_bytes"],
                                                                             strict=True)]
    by_index = dict(zip(meta["index"], paths, strict=True))
    assert [by_index[i] for i in sorted(by_index)] == hostile
    assert embeddings.shape == (len(hostile), 1280)


def test_hostile_names_through_classify_output_dir(b0_small_dir: Path, hostile: list[str], tmp_path: Path) -> None:
    from effnet_cli.scale.shards import read_predictions

    out = tmp_path / "preds"
    _assert_clean(run(["classify", *hostile, "--model", str(b0_small_dir), "-j", "0", "--output-dir", str(out)]))
    records = read_predictions(out)
    assert [r["path"] for r in records] == hostile and all(len(r["predictions"]) == 5 for r in records)
    raw = _jsonl(next(out.glob("pred_*.jsonl")))
    assert [path_from_fields(r) for r in raw] == hostile


# ------------------------------------------------------------------ the settings check, after SIGKILL


def test_resume_after_sigkill_refuses_changed_settings_and_finishes_identically(b0_small_dir: Path,
                                                                               tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 40)
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "1", "-j", "0"]
    reference = tmp_path / "ref" / "ref.npy"
    assert run(["embed", *common, "-o", str(reference)]).exit_code == 0

    out = tmp_path / "run" / "run.npy"
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "embed", *common, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: _lines(out.with_name("run.jsonl.partial")) >= 5)
    before = _snapshot(out.parent)
    assert "run.npy.partial" in before and "run.npy" not in before, "killed mid-run"

    half = run(["embed", *common, "-o", str(out), "--resume", "--dtype", "float16"])
    assert half.exit_code == 2 and "dtype" in half.stderr and "float32" in half.stderr, half.stderr
    other_model = tmp_path / "copy_of_model"
    shutil.copytree(b0_small_dir, other_model)
    moved = run(["embed", *common[:1], "--model", str(other_model), *common[3:], "-o", str(out), "--resume"])
    assert moved.exit_code == 2 and "model=" in moved.stderr, moved.stderr
    assert _snapshot(out.parent) == before  # the partial is untouched, byte for byte

    assert run(["embed", *common, "-o", str(out), "--resume"]).exit_code == 0
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_suffix(".jsonl").read_bytes() == reference.with_suffix(".jsonl").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == [".run.npy.done.json", "run.jsonl", "run.npy"]


def test_sharded_resume_after_sigkill_refuses_another_meta_format(b0_small_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 30)
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "1", "-j", "0", "--shard-size", "4"]
    assert run(["embed", *common, "--output-dir", str(tmp_path / "ref"), "--meta-format", "jsonl"]).exit_code == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "embed", *common, "--output-dir", str(out),
                             "--meta-format", "jsonl"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: len(list(out.glob("_done_*"))) >= 2 and
               any(_lines(p) >= 1 for p in out.glob(".emb_*.jsonl.partial")))
    before = _snapshot(out)
    marker = json.loads(before["_done_emb_00000.json"])
    assert marker["settings"]["meta_format"] == "jsonl" and marker["settings"]["dtype"] == "float32"

    parquet = run(["embed", *common, "--output-dir", str(out), "--resume"])  # parquet is the default
    assert parquet.exit_code == 2 and "meta_format" in parquet.stderr, parquet.stderr
    assert _snapshot(out) == before

    assert run(["embed", *common, "--output-dir", str(out), "--resume", "--meta-format", "jsonl"]).exit_code == 0
    assert _snapshot(out) == _snapshot(tmp_path / "ref")  # byte-identical to the uninterrupted run
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_meta_format_parquet_without_pyarrow_is_one_line(b0_small_dir: Path, photos: list[Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    res = run(["embed", str(photos[0]), "--model", str(b0_small_dir), "--output-dir", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--meta-format jsonl" in res.stderr and "pyarrow" in res.stderr


# ------------------------------------------------------------------ one writer at a time, no symlinks


def test_two_concurrent_writers_one_proceeds_the_other_is_refused_at_once(b0_small_dir: Path,
                                                                         tmp_path: Path) -> None:
    images = _images(tmp_path / "imgs", 6)
    common = ["--model", str(b0_small_dir), "-b", "2", "-j", "0"]
    out = tmp_path / "out.npy"
    # The first writer takes the lock, then waits for its input list on stdin: it is surely still running
    # when the second one starts.
    first = subprocess.Popen([sys.executable, "-m", "effnet_cli", "embed", "-", *common, "-o", str(out)],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = tmp_path / ".out.npy.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else ""):
        time.sleep(0.01)
    second = effnet("embed", *map(str, images), *common, "-o", str(out))
    assert first.poll() is None
    message = second.stderr.decode()
    assert second.returncode == 2 and str(lock) in message and f"pid {first.pid}" in message, message
    assert message.count("\n") == 1 and "Traceback" not in message
    assert not (tmp_path / "out.jsonl.partial").exists()  # the refused run wrote nothing

    _, err = first.communicate("".join(f"{p}\n" for p in images).encode(), timeout=300)
    assert first.returncode == 0, err.decode()
    reference = tmp_path / "ref" / "out.npy"
    assert run(["embed", *map(str, images), *common, "-o", str(reference)]).exit_code == 0
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_suffix(".jsonl").read_bytes() == reference.with_suffix(".jsonl").read_bytes()
    assert not lock.exists()


def test_classify_output_dir_takes_its_lock_before_reading_or_loading(b0_small_dir: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "imgs", 4)
    out = tmp_path / "preds"
    common = ["--model", str(b0_small_dir), "-b", "2", "-j", "0", "--output-dir", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "effnet_cli", "classify", "-", *common],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out / ".lock_pred"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else ""):
        time.sleep(0.01)
    # The second run names a model that does not exist: the lock is what it reports, so it loaded nothing.
    second = effnet("classify", *map(str, images), "--model", str(tmp_path / "no-such-model"), "-j", "0",
                    "--output-dir", str(out))
    message = second.stderr.decode()
    assert second.returncode == 2 and str(lock) in message and f"pid {first.pid}" in message, message
    _, err = first.communicate("".join(f"{p}\n" for p in images).encode(), timeout=300)
    assert first.returncode == 0, err.decode()
    records = [json.loads(line) for f in sorted(out.glob("pred_*.jsonl")) for line in f.read_text().splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in images]


def test_symlinks_planted_at_partial_and_temporary_names_are_not_followed(b0_small_dir: Path, photos: list[Path],
                                                                         tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "o" / "feats.npy"
    out.parent.mkdir()
    for name in ("feats.npy.partial", "feats.jsonl.partial", ".feats.npy.partial.json", ".feats.npy.done.json"):
        (out.parent / name).symlink_to(victim)
    res = run(["embed", str(photos[0]), "--model", str(b0_small_dir), "-j", "0", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    assert victim.read_text() == "precious\n"
    assert np.load(out).shape == (1, 1280)

    # A symlink at the lock's name is refused, not followed.
    (out.parent / ".feats.npy.lock").symlink_to(victim)
    res = run(["embed", str(photos[0]), "--model", str(b0_small_dir), "-j", "0", "-o", str(out)])
    assert res.exit_code == 2 and "symlink" in res.stderr and victim.read_text() == "precious\n"


def test_temporary_files_are_created_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from effnet_cli.output import atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = tmp_path / "out.json"
    planted = atomic.temp_path(target)
    planted.symlink_to(victim)
    names = iter([planted, atomic.temp_path(target)])
    monkeypatch.setattr(atomic, "temp_path", lambda t: next(names))  # the first random name is taken
    atomic.write_text(target, "{}\n")
    assert target.read_text() == "{}\n" and victim.read_text() == "precious\n" and planted.is_symlink()


# ------------------------------------------------------------------ convert --overwrite


def test_convert_overwrite_refuses_a_directory_with_files_it_did_not_write(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    import torch

    from tests.conftest import randomize

    ckpt = tmp_path / "tv_b0.pth"
    torch.save(randomize(torchvision.models.efficientnet_b0(weights=None), seed=4).state_dict(), ckpt)
    out = tmp_path / "model"
    assert run(["convert", str(ckpt), "-o", str(out)]).exit_code == 0
    (out / "thesis.tex").write_text("four years\n")
    res = run(["convert", str(ckpt), "-o", str(out), "--overwrite"])
    assert res.exit_code == 2 and "thesis.tex" in res.stderr, res.stderr
    assert (out / "thesis.tex").read_text() == "four years\n"
    (out / "thesis.tex").unlink()
    assert run(["convert", str(ckpt), "-o", str(out), "--overwrite"]).exit_code == 0  # only its own files: replaced
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]


# ------------------------------------------------------------------ --per-file collisions


def test_per_file_refuses_two_inputs_for_one_file(b0_small_dir: Path, photos: list[Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "work" / "photos").mkdir(parents=True)
    shutil.copy(photos[0], tmp_path / "photos" / "cat.jpg")
    shutil.copy(photos[1], tmp_path / "work" / "photos" / "cat.jpg")
    monkeypatch.chdir(tmp_path / "work")
    res = run(["embed", "../photos/cat.jpg", "photos/cat.jpg", "--model", str(b0_small_dir), "--per-file", "feats"])
    assert res.exit_code == 2 and "'../photos/cat.jpg'" in res.stderr and "'photos/cat.jpg'" in res.stderr
    assert not (tmp_path / "work" / "feats").exists()  # refused before anything was written


# ------------------------------------------------------------------ modes


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_created_files_follow_the_umask(umask: int, b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    import torch
    import torchvision

    from effnet_cli.weights.bundled import ensure_lite0
    from tests.conftest import randomize

    ckpt = tmp_path / "tv_b0.pth"
    torch.save(randomize(torchvision.models.efficientnet_b0(weights=None), seed=4).state_dict(), ckpt)
    previous = os.umask(umask)
    try:
        assert run(["convert", str(ckpt), "-o", str(tmp_path / "converted")]).exit_code == 0
        assert run(["config", "save", "b0", "-o", str(tmp_path / "b0.json")]).exit_code == 0
        assert run(["embed", str(photos[0]), "--model", str(b0_small_dir), "-j", "0",
                    "--per-file", str(tmp_path / "per")]).exit_code == 0
        assert run(["embed", str(photos[0]), "--model", str(b0_small_dir), "-j", "0",
                    "-o", str(tmp_path / "o.npy")]).exit_code == 0
        lite0 = ensure_lite0(tmp_path / "cache")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    files = [tmp_path / "b0.json", tmp_path / "o.npy", tmp_path / "o.jsonl", tmp_path / "per" / "manifest.jsonl",
             *(tmp_path / "per").rglob("*.npy"), lite0 / "model.safetensors", lite0 / "config.json",
             lite0 / "preprocessor_config.json", *(tmp_path / "converted").iterdir()]
    assert len(files) == 11
    modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {oct(expected)}, modes
    assert oct(stat.S_IMODE(lite0.stat().st_mode)) == oct(0o777 & ~umask)
    assert oct(stat.S_IMODE((tmp_path / "converted").stat().st_mode)) == oct(0o777 & ~umask)


def test_resume_removes_temporaries_a_kill_left_and_nothing_else(b0_small_dir: Path, photos: list[Path],
                                                                 tmp_path: Path) -> None:
    """A SIGKILL between creating a temporary and renaming it leaves ``.{name}.{random}.part``: a resume
    removes exactly those of its own files, and leaves a look-alike of someone else's untouched."""
    out = tmp_path / "shards"
    common = [*map(str, photos[:2]), "--model", str(b0_small_dir), "-j", "0", "--output-dir", str(out),
              "--shard-size", "1"]
    assert run(["embed", *common]).exit_code == 0
    ours = [out / "._done_emb_00001.json.0123456789ab.part", out / ".emb_00000.npy.ba9876543210.part"]
    theirs = out / ".thesis.tex.0123456789ab.part"
    for path in (*ours, theirs):
        path.write_bytes(b"left by a kill")
    res = run(["embed", *common, "--resume"])
    assert res.exit_code == 0, res.stderr
    assert not any(p.exists() for p in ours)
    assert theirs.read_bytes() == b"left by a kill"


def test_resume_with_another_backend_is_refused(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    """Runtimes agree within 1e-4, not bit for bit: one output never holds rows of two of them."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "feats.npy"
    common = [str(photos[0]), "--model", str(b0_small_dir), "-j", "0", "-o", str(out)]
    assert run(["embed", *common, "--backend", "torch"]).exit_code == 0
    before = _snapshot(tmp_path)
    res = run(["embed", *common, "--resume", "--backend", "onnxruntime"])
    assert res.exit_code == 2 and 'backend="torch" there, "onnxruntime" now' in res.stderr, res.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["classify", "embed"])
def test_a_refused_run_leaves_no_directories_behind(command: str, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "out"
    res = run([command, str(photos[0]), "--model", str(tmp_path / "no-such-model"), "--output-dir", str(out)])
    assert res.exit_code != 0 and "no-such-model" in res.stderr, res.stderr
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "theirs.txt").write_text("someone's file\n")
    res = run([command, str(photos[0]), "--model", str(tmp_path / "no-such-model"), "--output-dir", str(kept)])
    assert res.exit_code != 0 and sorted(p.name for p in kept.iterdir()) == ["theirs.txt"]
