"""What runs on Ray's workers for ``--engine ray`` (see :mod:`effnet_cli.scale.ray`): the decode tasks and
the model actors; and the driver's own computation of the inputs of a batch Ray dropped.

Decoding is the local pipeline's own (:func:`effnet_cli.data.iter_batches`), so the error reasons are
word for word those of a local run. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from effnet_cli.scale.spec import EngineSpec, RunOptions

__all__ = ["TEST_FAULTS_ENV", "ModelActor", "decode_stage", "expected_shape", "recompute"]

# Test-only hook, inert unless the variable names a directory: a model actor that manages to delete the
# file "kill-actor-once" in it SIGKILLs itself at the start of its batch, as the OOM killer would.
TEST_FAULTS_ENV = "EFFNET_TEST_RAY_FAULTS"


def shm_dir() -> str | None:
    """A memory-backed directory for the decode temporaries, or None for the system default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def decode_files(names: list[str], *, transform: Any, open_kwargs: dict[str, Any], shape: tuple[int, ...],
                 workers: int = 0, decode_timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The local pipeline's own decode + preprocess + stack: pixels (zeros where it failed) and error reasons
    ("" if none). ``workers=1`` decodes in a process of its own, where a crash costs one input's record;
    ``decode_timeout`` is --decode-timeout, each input's limit, as in a local run."""
    from effnet_cli.data import iter_batches

    n = len(names)
    pixels = np.zeros((n, *shape), dtype=np.float32)
    errors = np.full(n, "", dtype=object)
    batch_size = 1 if workers else max(n, 1)
    for decoded in iter_batches(names, transform, batch_size=batch_size, workers=workers, open_kwargs=open_kwargs,
                                decode_timeout=decode_timeout):
        for pos, reason in decoded.errors:
            errors[pos] = reason
        if decoded.indices:
            got = tuple(decoded.pixel_values.shape[1:])
            if got != shape:
                for pos in decoded.indices:
                    errors[pos] = f"preprocessed to shape {got}, but this run is {shape}"
            else:
                values = decoded.pixel_values
                pixels[decoded.indices] = values.numpy() if hasattr(values, "numpy") else values
    return pixels, errors


@contextlib.contextmanager
def blob_files(blobs: Any) -> Iterator[list[str]]:
    """The bytes as files in /dev/shm, or in the system's temporary directory when /dev/shm is full.

    Containers often give /dev/shm 64 MB, shared with Ray's own object store; a batch that does not
    fit there is decoded from disk rather than failing the task.
    """
    for directory in dict.fromkeys((shm_dir(), None)):
        with tempfile.TemporaryDirectory(prefix="effnet-decode-", dir=directory) as tmp:
            names = [os.path.join(tmp, str(i)) for i in range(len(blobs))]
            try:
                for name, blob in zip(names, blobs):
                    with open(name, "wb") as fh:
                        fh.write(blob)
            except OSError as exc:
                if directory is None or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                continue
            yield names
            return


def decode_stage(batch: dict[str, np.ndarray], *, transform: Any, open_kwargs: dict[str, Any],
                 shape: tuple[int, ...], decode_timeout: float | None = None) -> dict[str, np.ndarray]:
    """Ray task: bytes -> preprocessed pixels (zeros where it failed) and an error reason ("" if none)."""
    import torch

    torch.set_num_threads(1)  # decode tasks share the node's cores with each other and the actors
    paths, blobs = batch["path"], batch["bytes"]
    with blob_files(blobs) as names:
        pixels, errors = decode_files(names, transform=transform, open_kwargs=open_kwargs, shape=shape,
                                      decode_timeout=decode_timeout)
    return {"path": paths, "pixels": pixels, "error": errors}


def infer(engine: Any, kind: str, run: RunOptions, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decoded rows -> features (embed) or JSON predictions (classify), beside their paths and errors."""
    import torch

    errors = batch["error"]
    ok = np.array([not e for e in errors], dtype=bool)
    out: dict[str, np.ndarray] = {"path": batch["path"], "error": errors}
    pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
    if kind == "embed":
        features = np.zeros((len(errors), run.embed_width(engine)), dtype=np.float32)
        if ok.any() and run.layout:  # an index's rows
            from effnet_cli.similar.features import layout_rows

            features[ok] = layout_rows(engine, pixels)
        elif ok.any():
            features[ok] = engine.features(pixels, pool=run.pool, stage=run.stage, normalize=run.normalize).numpy()
        out["features"] = features
    else:
        records = np.full(len(errors), "", dtype=object)
        if ok.any():
            top = engine.topk(pixels, run.top_k, threshold=run.threshold, labels=run.labels)
            records[ok] = [json.dumps([p.to_dict() for p in preds]) for preds in top]
        out["predictions"] = records
    return out


def test_fault() -> None:
    """See :data:`TEST_FAULTS_ENV`; nothing at all unless it is set."""
    directory = os.environ.get(TEST_FAULTS_ENV)
    if directory:
        try:
            os.unlink(os.path.join(directory, "kill-actor-once"))
        except OSError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


class ModelActor:
    """Ray actor: holds one engine for the whole run and turns pixel batches into features or predictions."""

    def __init__(self, spec: EngineSpec, kind: str, run: RunOptions, threads: int) -> None:
        import dataclasses

        import ray
        import torch

        torch.set_num_threads(threads)
        if spec.backend == "torch":
            device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        else:  # ONNX Runtime or OpenVINO on the CPU, each actor with its own session and its share of threads
            device, spec = "cpu", dataclasses.replace(spec, threads=threads)
        self.engine = spec.build(device)
        self.kind, self.run = kind, run

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        test_fault()
        return infer(self.engine, self.kind, self.run, batch)


def expected_shape(engine: Any) -> tuple[int, ...]:
    """The pixel shape the processor produces (fixed for every published preprocessing)."""
    from PIL import Image

    return tuple(engine.transform(Image.new("RGB", (320, 320), (128, 128, 128))).shape)


Recomputed = dict[int, tuple[str | None, Any]]  # position -> (error reason or None, features or predictions)


def recompute(todo: list[str], engine: Any, kind: str, run: RunOptions,
              on_recompute: Callable[[int], None] | None = None) -> Callable[[list[int]], Recomputed]:
    """The driver's own computation of inputs whose Ray batch was dropped: each decoded in a process of its
    own (an input that crashes the decoder gets its error record, not its neighbours), then the model.
    ``on_recompute`` hears how many inputs each time, so a run where Ray keeps failing does not go quiet."""
    shape = expected_shape(engine)

    def compute(positions: list[int]) -> Recomputed:
        if on_recompute is not None:
            on_recompute(len(positions))
        names = [todo[pos] for pos in positions]
        pixels, errors = decode_files(names, transform=engine.transform, open_kwargs=engine.open_kwargs,
                                      shape=shape, workers=1, decode_timeout=getattr(engine, "decode_timeout", None))
        out = infer(engine, kind, run, {"path": np.array(names, dtype=object), "pixels": pixels, "error": errors})
        values = out["features"] if kind == "embed" else out["predictions"]
        return {pos: (str(error) or None, value) for pos, error, value in zip(positions, out["error"], values)}

    return compute
