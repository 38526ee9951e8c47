"""effnet_cli.data.pool: the torch-free batched loader keeps the torch loader's promises.

Same rows and reasons as effnet_cli.data.loader.iter_batches, input order with several
workers, one record for a worker that dies, no torch anywhere, no process left behind.
This module imports no torch at module level: the pool's workers import it to unpickle
the transforms defined here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet_cli.core.numpy_pixels import PixelPipeline
from effnet_cli.data.pool import CRASH_REASON, iter_batches

LITE0 = {"do_resize": True, "size": {"shortest_edge": 256}, "resample": 2, "do_center_crop": True,
         "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
         "rescale_offset": False, "do_normalize": True, "image_mean": [127 / 255] * 3,
         "image_std": [128 / 255] * 3, "include_top": False}


def solid(path: Path, red: int, size=(6, 6)) -> str:
    Image.new("RGB", size, (red, 50, 100)).save(path)
    return str(path)


def to_array8(image: Image.Image) -> np.ndarray:
    """Test transform: 8×8, 0..1, 3×8×8 float32."""
    return np.asarray(image.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255


class CrashOnSize:
    """Kills its process for images of one size, as a decoder segfault would."""

    def __init__(self, size: tuple[int, int], how: str) -> None:
        self.size, self.how = size, how

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.size == self.size:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.how == "segfault":
                import ctypes

                ctypes.string_at(0)
            os._exit(1)
        return to_array8(image)


class SlowFirst:
    """Slow on the first inputs, and leaves a file named after its process id for each image."""

    def __init__(self, marker_dir: Path) -> None:
        self.marker_dir = marker_dir

    def __call__(self, image: Image.Image) -> np.ndarray:
        (self.marker_dir / f"{os.getpid()}-{time.monotonic_ns()}").touch()
        if image.size == (9, 9):
            time.sleep(0.5)
        return to_array8(image)


def collect(batches) -> tuple[list, dict[int, np.ndarray], dict[int, str]]:
    """(batches, rows by position, reasons by position); the torch loader's tensors read as numpy."""
    got = list(batches)
    rows: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    for batch in got:
        values = batch.pixel_values if isinstance(batch.pixel_values, np.ndarray) else batch.pixel_values.numpy()
        assert values.dtype == np.float32 and values.shape[0] == len(batch.indices)
        for pos, row, err in batch.outcomes():
            assert (row is None) != (err is None)
            if row is None:
                errors[pos] = err
            else:
                rows[pos] = values[row]
    return got, rows, errors


def _alive(pid: int) -> bool:
    """True for a running process (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def test_same_batches_as_the_torch_loader(photos, tmp_path):
    from effnet_cli.core.processor import EfficientNetImageProcessor
    from effnet_cli.data import loader

    broken = tmp_path / "cut.jpg"
    broken.write_bytes(photos[0].read_bytes()[:2000])
    (tmp_path / "notes.jpg").write_text("not a photo\n")
    (tmp_path / "empty.png").write_bytes(b"")
    paths = [str(p) for p in photos[:2]] + [str(broken), str(tmp_path / "notes.jpg"), str(tmp_path / "gone.jpg")]
    paths += [str(p) for p in photos[2:]] + [str(tmp_path / "empty.png"), str(tmp_path)]
    processor = EfficientNetImageProcessor.from_dict(LITE0)
    kwargs = {"batch_size": 3, "open_kwargs": {"draft_size": (336, 336)}}
    want, want_rows, want_errors = collect(loader.iter_batches(paths, processor.preprocess_pil, workers=0, **kwargs))
    got, rows, errors = collect(iter_batches(paths, PixelPipeline.from_processor(processor), workers=2, **kwargs))
    assert all(isinstance(b.pixel_values, np.ndarray) for b in got)
    assert [b.span for b in got] == [b.span for b in want]
    assert [b.indices for b in got] == [b.indices for b in want]
    assert errors == want_errors and len(errors) == 5
    assert rows.keys() == want_rows.keys()
    assert all(float(np.abs(rows[i] - want_rows[i]).max()) <= 1e-6 for i in rows)


@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
def test_a_dying_worker_costs_one_record(tmp_path, how):
    paths = [solid(tmp_path / f"{i}.png", 10 * i) for i in range(10)]
    paths[6] = solid(tmp_path / "deadly.png", 0, size=(13, 7))
    got, rows, errors = collect(iter_batches(paths, CrashOnSize((13, 7), how), batch_size=3, workers=2))
    assert [b.span for b in got] == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    assert errors == {6: CRASH_REASON}
    assert sorted(rows) == [i for i in range(10) if i != 6]
    assert all(round(float(rows[i][0].mean()) * 255) == 10 * i for i in rows)


def test_order_kept_with_several_workers_and_in_process(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    paths = [solid(tmp_path / f"{i}.png", 10 * i, size=(9, 9) if i < 2 else (6, 6)) for i in range(12)]
    paths[4] = str(tmp_path / "missing.png")
    for workers in (3, 0):
        got, rows, errors = collect(iter_batches(paths, SlowFirst(markers), batch_size=1, workers=workers))
        assert [b.span for b in got] == [range(i, i + 1) for i in range(12)]
        assert errors == {4: "no such file"}
        assert all(round(float(rows[i][0].mean()) * 255) == 10 * i for i in rows)


def _worker_pids(markers: Path) -> set[int]:
    return {int(name.split("-")[0]) for name in os.listdir(markers)} - {os.getpid()}


def test_no_process_left_after_early_close_or_the_end(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    paths = [solid(tmp_path / f"{i}.png", i, size=(9, 9) if i % 5 == 0 else (6, 6)) for i in range(40)]
    gen = iter_batches(paths, SlowFirst(markers), batch_size=2, workers=2, prefetch=2)
    assert next(gen).span == range(0, 2)
    gen.close()
    early = _worker_pids(markers)
    assert early and not any(_alive(pid) for pid in early)
    decoded = len(os.listdir(markers))
    time.sleep(0.3)
    assert len(os.listdir(markers)) == decoded < 40  # nothing decodes on after the close

    for marker in markers.iterdir():
        marker.unlink()
    collect(iter_batches(paths[:6], SlowFirst(markers), batch_size=2, workers=2))
    done = _worker_pids(markers)
    assert done and not any(_alive(pid) for pid in done)


def test_bad_arguments_and_empty_input(tmp_path):
    from effnet_cli.errors import InputError

    with pytest.raises(InputError):
        next(iter_batches(["x"], to_array8, batch_size=0, workers=0))
    with pytest.raises(TypeError):
        next(iter_batches(["x"], to_array8, batch_size=1, workers=0, open_kwargs={"max_pixel": 4}))
    assert list(iter_batches([], to_array8, batch_size=4, workers=2)) == []
    (batch,) = iter_batches([str(tmp_path / "a")], to_array8, batch_size=4, workers=1)
    assert batch.pixel_values.shape == (0, 3, 0, 0) and batch.errors == [(0, "no such file")]


def test_no_torch_in_the_main_process_or_the_workers(photos, tmp_path):
    script = tmp_path / "lean.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from effnet_cli.core.numpy_pixels import PixelPipeline
        from effnet_cli.data.pool import iter_batches

        class Checked:
            '''The lite0 pipeline, failing in any process where torch has been imported.'''
            def __init__(self):
                self.pipeline = PixelPipeline.from_processor({LITE0!r})
            def __call__(self, image):
                loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]
                if loaded:
                    raise RuntimeError(f"torch in a worker: {{loaded[:3]}}")
                return self.pipeline(image)

        if __name__ == "__main__":
            paths = {[str(p) for p in photos]!r}
            batches = list(iter_batches(paths, Checked(), batch_size=2, workers=2))
            assert all(not b.errors for b in batches), [b.errors for b in batches]
            assert sum(len(b.indices) for b in batches) == len(paths)
            loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]
            assert not loaded, loaded[:5]
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, str(script)], check=True, env=env, cwd=tempfile.gettempdir(), timeout=120)


def test_a_short_run_forks_its_workers_and_still_survives_a_crash(tmp_path):
    """One batch per worker: forked from the caller (no fork server to wait for), crash isolation kept.

    Longer runs, and any process where torch or a runtime is loaded, use the fork server. The
    check runs in a fresh interpreter, since this test process has torch loaded.
    """
    script = tmp_path / "short.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        from PIL import Image
        from effnet_cli.data.pool import CRASH_REASON, start_batches

        class ParentAndCrash:
            '''Rows hold the worker's parent pid; a 13×7 image kills its process.'''
            def __call__(self, image):
                if image.size == (13, 7):
                    os.kill(os.getpid(), signal.SIGKILL)
                return np.full((3, 2, 2), os.getppid(), np.float32)

        if __name__ == "__main__":
            folder = {str(tmp_path)!r}
            paths = []
            for i in range(6):
                path = os.path.join(folder, f"{{i}}.png")
                Image.new("RGB", (13, 7) if i == 4 else (6, 6), (i, 0, 0)).save(path)
                paths.append(path)
            def parents(paths, batch_size, workers):
                batches = list(start_batches(paths, ParentAndCrash(), batch_size=batch_size, workers=workers))
                errors = [e for b in batches for e in b.errors]
                assert errors == ([(4, CRASH_REASON)] if len(paths) > 4 else []), errors
                return {{int(v) for b in batches for v in b.pixel_values[:, 0, 0, 0]}}
            assert parents(paths[:4], 4, 2) == {{os.getpid()}}  # one batch: a fork of this process
            assert os.getpid() not in parents(paths, 6, 2)  # its crash: redone in the fork server's children
            assert os.getpid() not in parents(paths[:4], 1, 2)  # 4 batches on 2 workers: the fork server
            import torch  # noqa: F401 - a process with torch's threads never forks
            assert os.getpid() not in parents(paths[:4], 4, 2)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, str(script)], check=True, env=env, cwd=tempfile.gettempdir(), timeout=120)
