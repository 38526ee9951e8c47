"""Faults from the machine while writing: a full disk, a quota, a read-only or forbidden directory, a failing device.

The harness (:class:`Faults`) makes the Nth write, fsync or rename under a test's output directory
fail (``os.write``, ``os.fsync``, ``os.replace``/``os.rename``: the calls every file of the output
layer goes through), for N = 1, 2, ... until a run gets through, and checks after each failed run
what a user relies on: one line naming the output and the cause, exit status 1, nothing partial
under a final name, every earlier file byte for byte as it was, and a rerun (or ``--resume``) that
ends with the output of an undisturbed run.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import Outcome, run

pytestmark = pytest.mark.usefixtures("one_thread")

CAUSES = {errno.ENOSPC: "no space left on device", errno.EIO: "input/output error",
          errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied"}
EARLIER = b"a file that was here before the run\n"
# The Nth call fails with ENOSPC for odd N and EIO for even N (or the other way round): every call
# of a run fails once, and each cause is met at every kind of call (write, fsync, rename).
ALTERNATING = (errno.ENOSPC, errno.EIO)


class Faults:
    """Counts the writes, fsyncs and renames that touch ``root``; the ``nth`` of them fails with ``code``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = str(root.resolve())
        self.nth, self.code, self.calls, self.fired = 0, errno.ENOSPC, 0, None
        real = {name: getattr(os, name) for name in ("write", "fsync", "replace", "rename")}

        def fd_path(fd: object) -> str:
            fd = fd if isinstance(fd, int) else fd.fileno()  # os.fsync takes file objects too
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return ""

        def write(fd, data):
            self._hit("write", fd_path(fd))
            return real["write"](fd, data)

        def fsync(fd):
            path = fd_path(fd)
            self._hit("fsync", path)
            if not self._under(path):
                return real["fsync"](fd)
            return None  # what a power cut would lose is not at stake here, and a real fsync is slow


        def rename(name):
            def call(src, dst, *args, **kwargs):
                self._hit(name, os.path.abspath(dst))
                return real[name](src, dst, *args, **kwargs)
            return call

        for name, fake in (("write", write), ("fsync", fsync), ("replace", rename("replace")),
                           ("rename", rename("rename"))):
            monkeypatch.setattr(os, name, fake)

    def arm(self, nth: int, codes: tuple[int, ...]) -> int:
        """Fail the ``nth`` call from now on (0: none), with ``codes`` taking turns (N = 1 the first); returns it."""
        self.code = codes[(nth - 1) % len(codes)]
        self.nth, self.calls, self.fired = nth, 0, None
        return self.code

    def _under(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    def _hit(self, what: str, path: str) -> None:
        if not self._under(path):
            return
        self.calls += 1
        if self.calls == self.nth:
            self.fired = f"{what} #{self.nth} ({os.path.basename(path)})"
            raise OSError(self.code, os.strerror(self.code))


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Faults:
    """The harness on ``tmp_path / "out"`` (created empty), disarmed."""
    (tmp_path / "out").mkdir()
    return Faults(monkeypatch, tmp_path / "out")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded EfficientNet a quarter of b0's width and a fifth of its depth: each run loads it in a blink."""
    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.hub import default_processor, save_pretrained
    from tests.conftest import randomize

    labels = {i: f"class {i}" for i in range(10)}
    config = EfficientNetConfig.from_variant("b0", width_coefficient=0.25, depth_coefficient=0.2, image_size=32,
                                             id2label=labels, label2id={v: k for k, v in labels.items()})
    directory = tmp_path_factory.mktemp("tiny")
    save_pretrained(randomize(EfficientNetForImageClassification(config), seed=5), directory,
                    default_processor(config))
    return directory


@pytest.fixture(scope="module")
def few_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("few")
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(directory / f"img{i}.png")
    (directory / "img2.png").write_bytes(b"broken")  # an error record goes through the same writes
    return directory


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative name -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _final(tree: dict[str, bytes]) -> dict[str, bytes]:
    """The files under a final name: no hidden file (markers, temporaries), no ``.partial``."""
    return {name: data for name, data in tree.items()
            if not any(part.startswith(".") for part in Path(name).parts) and not name.endswith(".partial")}


def _check_failed_run(outcome: Outcome, code: int, fired: str) -> None:
    """Exit 1, one line naming the output (never a temporary) and the cause, no traceback."""
    where = f"failing {fired} with {errno.errorcode[code]}"
    assert outcome.exit_code == 1, f"{where}: exit {outcome.exit_code}\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr, where
    lines = [line for line in outcome.stderr.splitlines() if "cannot write" in line]
    assert len(lines) == 1, f"{where}: {outcome.stderr}"
    assert lines[0].startswith("effnet: cannot write ") and CAUSES[code] in lines[0], f"{where}: {lines[0]}"
    assert ".part" not in lines[0] and ".tmp" not in lines[0], f"{where}: names a temporary: {lines[0]}"


def _sweep(faults: Faults, out: Path, args: list[str], reference: dict[str, bytes], codes: tuple[int, ...], *,
           rerun: list[str] | None = None, prepare: Callable[[], None] = lambda: None,
           all_or_nothing: bool = False) -> int:
    """Fail the 1st, 2nd, ... write/fsync/rename under ``out`` until a run gets through; check each time.

    ``prepare`` puts the earlier files in place before each run (``earlier.txt`` is always there);
    ``reference`` is the final files of an undisturbed run; ``rerun`` (default: ``args``) is run after
    each failure that left the output incomplete. ``all_or_nothing``: the output appears whole or not
    at all (a directory published by one rename). Returns how many calls were failed in turn.
    """
    nth = 0
    while True:
        nth += 1
        assert nth < 400, "the runs never got through"
        shutil.rmtree(out)
        out.mkdir()
        (out / "earlier.txt").write_bytes(EARLIER)
        prepare()
        before = _final(_tree(out))
        code = faults.arm(nth, codes)
        outcome = run(args)
        fired = faults.fired
        faults.arm(0, codes)
        if fired is None:  # every call got through: an undisturbed run
            assert "cannot write" not in outcome.stderr, outcome.stderr
            assert _final(_tree(out)) == {**before, **reference}
            return nth - 1
        _check_failed_run(outcome, code, fired)
        tree = _tree(out)
        assert not [n for n in tree if n.endswith(".part") or ".tmp" in n], f"failing {fired}: {sorted(tree)}"
        after = _final(tree)
        for name, data in after.items():  # as it was before the run, or whole as an undisturbed run writes it
            assert data in (before.get(name), reference.get(name)), f"failing {fired}: {name} is cut short or new"
        assert set(before) <= set(after), f"failing {fired}: an earlier file is gone"
        if all_or_nothing:
            assert set(after) in (set(before), set(before) | set(reference)), f"failing {fired}: {sorted(after)}"
        if set(reference) - set(after) or any(after[n] != reference[n] for n in reference if n in after):
            again = run(rerun or args)
            assert "cannot write" not in again.stderr, f"rerun after {fired}: {again.stderr}"
            assert _final(_tree(out)) == {**before, **reference}, f"rerun after {fired} differs"


def _reference(args: list[str], out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    outcome = run(args)
    assert outcome.exit_code in (0, 1), outcome.stderr  # 1: img2.png is broken
    return _final(_tree(out))


def _common(model: Path, images: Path) -> list[str]:
    return [str(images), "--model", str(model), "-b", "2", "-j", "0", "--backend", "torch", "-q"]


@pytest.mark.parametrize("codes", [ALTERNATING, pytest.param(ALTERNATING[::-1], marks=pytest.mark.slow)],
                         ids=["ENOSPC-EIO", "EIO-ENOSPC"])
def test_every_write_of_embed_o_failing_in_turn(faults: Faults, tiny_model: Path, few_images: Path,
                                               tmp_path: Path, codes: tuple[int, int]) -> None:
    out = tmp_path / "out"
    reference = _reference(["embed", *_common(tiny_model, few_images), "-o", str(tmp_path / "ref" / "feats.npy")],
                           tmp_path / "ref")
    assert set(reference) == {"feats.npy", "feats.jsonl"}
    args = ["embed", *_common(tiny_model, few_images), "-o", str(out / "feats.npy")]
    failed = _sweep(faults, out, args, reference, codes, rerun=[*args, "--resume"])
    assert failed >= 20  # every batch's rows, records and fsyncs, the publication and the marker


def test_every_write_of_embed_output_dir_failing_in_turn(faults: Faults, tiny_model: Path, few_images: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    shards = ["--shard-size", "2"]
    reference = _reference(["embed", *_common(tiny_model, few_images), *shards, "--output-dir",
                            str(tmp_path / "ref" / "shards")], tmp_path / "ref")
    assert any(name.endswith(".parquet") for name in reference) and any("errors_" in n for n in reference)
    args = ["embed", *_common(tiny_model, few_images), *shards, "--output-dir", str(out / "shards")]
    failed = _sweep(faults, out, args, reference, ALTERNATING, rerun=[*args, "--resume"])
    assert failed >= 40  # two shards: rows, records, meta (Parquet), errors, markers


def test_every_write_of_embed_per_file_failing_in_turn(faults: Faults, tiny_model: Path, few_images: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    reference = _reference(["embed", *_common(tiny_model, few_images), "--per-file", str(tmp_path / "ref" / "files")],
                           tmp_path / "ref")
    assert len(reference) == 4  # three arrays and the manifest
    args = ["embed", *_common(tiny_model, few_images), "--per-file", str(out / "files")]
    failed = _sweep(faults, out, args, reference, ALTERNATING)  # taken back: a plain rerun works
    assert failed >= 12


@pytest.mark.parametrize("codes", [ALTERNATING, ALTERNATING[::-1]], ids=["ENOSPC-EIO", "EIO-ENOSPC"])
def test_every_write_of_classify_o_failing_in_turn_keeps_the_file_it_replaces(
        faults: Faults, tiny_model: Path, few_images: Path, tmp_path: Path, codes: tuple[int, int]) -> None:
    out = tmp_path / "out"
    reference = _reference(["classify", *_common(tiny_model, few_images), "-f", "jsonl", "-o",
                            str(tmp_path / "ref" / "preds.jsonl")], tmp_path / "ref")
    args = ["classify", *_common(tiny_model, few_images), "-f", "jsonl", "-o", str(out / "preds.jsonl"),
            "--overwrite"]

    def an_older_result() -> None:  # --overwrite must leave it whole until the new one is complete
        (out / "preds.jsonl").write_text('{"path": "an older run"}\n')

    failed = _sweep(faults, out, args, reference, codes, prepare=an_older_result)
    assert failed >= 4  # the records, the fsync, the rename, the directory's fsync


def test_every_write_of_export_failing_in_turn(faults: Faults, tiny_model: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    reference = _reference(["export", str(tiny_model), "-o", str(tmp_path / "ref" / "exported")], tmp_path / "ref")
    assert set(reference) == {"exported/model.onnx", "exported/config.json", "exported/preprocessor_config.json"}
    # torch's exporter (seconds a run) writes model.onnx itself, below the output layer: the runs of the
    # sweep get its bytes from the reference run, and the output layer does the rest as always.
    onnx = reference["exported/model.onnx"]
    monkeypatch.setattr("effnet_cli.runtime.export._write_onnx", lambda model, path, **_: Path(path).write_bytes(onnx))
    args = ["export", str(tiny_model), "-o", str(out / "exported")]
    failed = _sweep(faults, out, args, reference, ALTERNATING, all_or_nothing=True)
    assert failed >= 10  # two JSON files written, three files fsynced, the directory renamed


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_each_cause_is_named_in_the_one_line(faults: Faults, tiny_model: Path, few_images: Path, tmp_path: Path,
                                             code: int) -> None:
    """A quota, a file system remounted read-only mid-run, a permission taken away: each named as it is."""
    out = tmp_path / "out"
    faults.arm(3, (code,))  # the partial array's first rows
    outcome = run(["embed", *_common(tiny_model, few_images), "-o", str(out / "feats.npy")])
    assert faults.fired is not None
    _check_failed_run(outcome, code, faults.fired)
    hint = "; free some space and run again" if code == errno.EDQUOT else ""
    assert outcome.stderr.strip() == f"effnet: cannot write {out / 'feats.npy'}: {CAUSES[code]}{hint}."
    assert not (out / "feats.npy").exists()
    faults.arm(0, (code,))
    assert run(["embed", *_common(tiny_model, few_images), "-o", str(out / "feats.npy"), "--resume"]).exit_code == 1
    assert np.load(out / "feats.npy").shape == (3, 320)


def test_a_library_caller_gets_an_oserror_naming_the_final_file(faults: Faults, tmp_path: Path) -> None:
    from effnet_cli.errors import WriteError
    from effnet_cli.output import write_text

    faults.arm(1, (errno.ENOSPC,))
    with pytest.raises(OSError) as raised:  # what code written for transformers' save_pretrained catches
        write_text(tmp_path / "out" / "config.json", "{}")
    assert isinstance(raised.value, WriteError) and raised.value.errno == errno.ENOSPC
    assert str(raised.value) == (f"cannot write {tmp_path / 'out' / 'config.json'}: no space left on device; "
                                 "free some space and run again.")
    assert os.listdir(tmp_path / "out") == []  # the temporary is gone too


# ------------------------------------------------------------ a real full or read-only file system
def _mount_tmpfs(directory: Path, size: str, *options: str) -> None:
    """Mount a small tmpfs on ``directory``, or skip the test saying why this machine cannot."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected ENOSPC tests above cover the same paths)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs",
                           str(directory)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs ({done.stderr.decode().strip()}); "
                    "the injected ENOSPC tests above cover the same paths")


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs holding one earlier file, unmounted afterwards."""
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "1m")
    (mount / "earlier.txt").write_bytes(EARLIER)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 256 KiB tmpfs holding one earlier file: the tiny model's export (0.8 MB) does not fit."""
    mount = tmp_path / "tiny"
    _mount_tmpfs(mount, "256k")
    (mount / "earlier.txt").write_bytes(EARLIER)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only_fs(tmp_path: Path):
    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "1m", "ro")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def many_small_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 images: 300 rows of b0's 1280 float32 features (1.5 MB) do not fit in 1 MiB."""
    directory = tmp_path_factory.mktemp("many-small")
    rng = np.random.default_rng(4)
    for i in range(300):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(directory / f"img{i:03d}.png")
    return directory


def _full_disk_outcome(outcome: Outcome, mount: Path) -> None:
    _check_failed_run(outcome, errno.ENOSPC, "a full file system")
    assert (mount / "earlier.txt").read_bytes() == EARLIER


def test_embed_o_onto_a_nearly_full_file_system(small_fs: Path, b0_small_dir: Path, many_small_images: Path) -> None:
    args = ["embed", str(many_small_images), "--model", str(b0_small_dir), "-b", "32", "-j", "0", "--backend",
            "torch", "-q", "-o", str(small_fs / "feats.npy")]
    outcome = run(args)
    _full_disk_outcome(outcome, small_fs)
    assert "cannot write " + str(small_fs / "feats.npy") + ":" in outcome.stderr
    assert not (small_fs / "feats.npy").exists() and not (small_fs / "feats.jsonl").exists()
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_fs)], check=True)  # space freed
    assert run([*args, "--resume"]).exit_code == 0
    assert np.load(small_fs / "feats.npy").shape == (300, 1280)


def test_embed_output_dir_onto_a_nearly_full_file_system(small_fs: Path, b0_small_dir: Path,
                                                         many_small_images: Path) -> None:
    shards = small_fs / "shards"
    args = ["embed", str(many_small_images), "--model", str(b0_small_dir), "-b", "32", "-j", "0", "--backend",
            "torch", "-q", "--output-dir", str(shards), "--shard-size", "64"]
    outcome = run(args)
    _full_disk_outcome(outcome, small_fs)
    kept = {p.name: p.read_bytes() for p in shards.iterdir() if p.name.startswith("emb_")}
    assert kept, "the shards finished before the disk filled up are published"
    assert all(len(data) == 128 + 64 * 1280 * 4 for data in kept.values())  # each one whole
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_fs)], check=True)
    assert run([*args, "--resume"]).exit_code == 0
    for name, data in kept.items():
        assert (shards / name).read_bytes() == data  # finished shards are kept as they were
    assert sum(np.load(p).shape[0] for p in shards.glob("emb_*.npy")) == 300


def test_export_onto_a_nearly_full_file_system(tiny_fs: Path, tiny_model: Path) -> None:
    outcome = run(["export", str(tiny_model), "-o", str(tiny_fs / "exported")])
    _full_disk_outcome(outcome, tiny_fs)
    assert f"cannot write {tiny_fs / 'exported'}: no space left on device" in outcome.stderr
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["earlier.txt"]  # nothing half-written left


@pytest.mark.parametrize("args", [
    ["embed", "-o", "{ro}/feats.npy"],
    ["embed", "--output-dir", "{ro}/shards"],
    ["embed", "--per-file", "{ro}/files"],
    ["classify", "-o", "{ro}/preds.jsonl"],
    ["export", "-o", "{ro}/exported"],
], ids=["embed-o", "output-dir", "per-file", "classify-o", "export"])
def test_a_read_only_output_is_refused_before_any_work(read_only_fs: Path, b0_small_dir: Path, few_images: Path,
                                                       args: list[str]) -> None:
    command, *rest = args
    inputs = [str(b0_small_dir)] if command == "export" else [str(few_images), "--model", str(b0_small_dir)]
    outcome = run([command, *inputs, *[a.format(ro=read_only_fs) for a in rest]])
    assert outcome.exit_code == 2, outcome.stderr
    target = rest[-1].format(ro=read_only_fs)
    assert outcome.stderr.strip() == f"effnet: cannot write {target}: read-only file system."


def test_finetune_into_a_read_only_directory_is_refused_before_any_work(read_only_fs: Path, b0_small_dir: Path,
                                                                        tmp_path: Path) -> None:
    from tests.test_finetune import make_dataset

    data = make_dataset(tmp_path / "data", per_class=2)
    outcome = run(["finetune", str(data), "-o", str(read_only_fs / "model"), "--model", str(b0_small_dir)])
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.stderr.strip() == f"effnet: cannot write {read_only_fs / 'model'}: read-only file system."


def test_cache_that_cannot_be_written_falls_back_with_one_warning(read_only_fs: Path, tiny_model: Path,
                                                                  few_images: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EFFNET_CACHE", str(read_only_fs / "cache"))
    args = ["classify", str(few_images / "img0.png"), "--model", str(tiny_model), "--backend", "onnxruntime",
            "-f", "jsonl"]
    outcome = run(args)
    assert outcome.exit_code == 0, outcome.stderr
    warnings = [line for line in outcome.stderr.splitlines() if "warning" in line]
    assert warnings == [f"effnet: warning: effnet's cache at {read_only_fs / 'cache'} cannot be written (read-only "
                        "file system); exporting for this run only. Set EFFNET_CACHE to a writable directory to keep "
                        "exports."]
    monkeypatch.setenv("EFFNET_CACHE", str(read_only_fs.parent / "writable-cache"))
    assert run(args).stdout == outcome.stdout  # the same predictions as with a cache


def test_cache_filling_up_falls_back_with_one_warning(tiny_fs: Path, tiny_model: Path, few_images: Path,
                                                      monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    small_fs = tiny_fs
    monkeypatch.setenv("EFFNET_CACHE", str(small_fs / "cache"))
    outcome = run(["classify", str(few_images / "img0.png"), "--model", str(tiny_model), "--backend",
                   "onnxruntime", "-f", "jsonl"])
    assert outcome.exit_code == 0, outcome.stderr
    assert [line for line in outcome.stderr.splitlines() if "warning" in line] == [
        f"effnet: warning: effnet's cache at {small_fs / 'cache'} cannot be written (no space left on device); "
        "exporting for this run only. Set EFFNET_CACHE to a writable directory to keep exports."]
    assert not [p for p in (small_fs / "cache").rglob("*") if p.is_file()]  # no half export, no index entry


# ------------------------------------------------------------ Ray with a small /dev/shm
@pytest.mark.slow
def test_ray_run_with_a_tiny_dev_shm_completes(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    """Containers give /dev/shm 64 MB or less; Ray's decode tasks then write the image bytes to disk instead."""
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private /dev/shm needs root and unshare(1) (mount namespaces)")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /dev/shm"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine cannot mount a private /dev/shm ({probe.stderr.decode().strip()})")
    images = tmp_path / "photos"
    images.mkdir()
    for photo in photos:  # 5 photos of 40-400 KB: more than 64 KiB in every decode batch
        shutil.copy(photo, images / photo.name)
    common = [str(images), "--model", str(b0_small_dir), "-q"]
    script = (f"mount -t tmpfs -o size=64k tmpfs /dev/shm && exec {sys.executable} -m effnet_cli embed "
              + " ".join(common) + f" --engine ray --output-dir {tmp_path / 'ray'}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    local = run(["embed", *common, "-j", "0", "--output-dir", str(tmp_path / "local")])
    assert local.exit_code == 0, local.stderr
    np.testing.assert_allclose(np.load(tmp_path / "ray" / "emb_00000.npy"),
                               np.load(tmp_path / "local" / "emb_00000.npy"), rtol=1e-5, atol=1e-5)
