"""The lean engine: an export run in ONNX Runtime or OpenVINO by a process that never imports torch.

An export directory (``effnet export``, or an entry of effnet's export cache) holds everything
inference needs: the graph (``model.onnx``, or ``model.xml`` + ``model.bin``), ``config.json``
(labels) and ``preprocessor_config.json``. :class:`LeanEngine` builds from it the numpy
preprocessing (:class:`effnet_cli.core.numpy_pixels.PixelPipeline`, equal to the processor's),
a runner (:mod:`effnet_cli.runtime.runners`) and the label names, and decodes through the
torch-free loader (:mod:`effnet_cli.data.pool`), whose worker processes import no torch either.
It has the methods :mod:`effnet_cli.runtime.paths` calls, so ``classify_paths`` and
``embed_paths`` give the same records as with the PyTorch :class:`effnet_cli.runtime.engine.Engine`.

:func:`lean_for_model` finds, without torch, a cached export of a model's files (through
:mod:`effnet_cli.runtime.index`) for ``--backend auto``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.core.config_v2 import read_config
from effnet_cli.core.numpy_pixels import PixelPipeline
from effnet_cli.core.processor import EfficientNetImageProcessor
from effnet_cli.data.decode import DEFAULT_MAX_PIXELS, draft_options
from effnet_cli.data.limits import DEFAULT_DECODE_TIMEOUT
from effnet_cli.errors import ConfigError, InputError
from effnet_cli.host import installed
from effnet_cli.records.results import Prediction
from effnet_cli.runtime.index import find_choice, find_export
from effnet_cli.runtime.paths import POOLS
from effnet_cli.runtime.runners import FILE_OF, FORMAT_OF, open_runner, require_runtime

__all__ = ["LeanEngine", "export_format", "lean_for_model", "runtime_file"]

def export_format(directory: str | Path) -> str | None:
    """"onnx" or "openvino" when ``directory`` is an export (its model file and config.json), else None."""
    directory = Path(directory).expanduser()
    if not (directory / "config.json").is_file():
        return None
    for fmt in ("openvino", "onnx"):  # an OpenVINO export may keep the ONNX graph it came from
        if (directory / FILE_OF[fmt]).is_file():
            return fmt
    return None


def runtime_file(directory: Path, backend: str) -> Path:
    """The model file ``backend`` runs from an export directory: OpenVINO its IR when there is one, else the
    ONNX graph (which OpenVINO reads too); ONNX Runtime the ONNX graph."""
    xml = directory / FILE_OF["openvino"]
    return xml if backend == "openvino" and xml.is_file() else directory / FILE_OF["onnx"]


def _pick_backend(directory: Path, requested: str) -> tuple[str, Path]:
    """The runtime that runs the export in ``directory`` for ``--backend requested``, and its model file."""
    onnx = directory / FILE_OF["onnx"]
    if requested == "torch":
        raise InputError(f"{directory} is an exported model, which PyTorch cannot run; use --backend auto, "
                         "onnxruntime or openvino, or give the weights directory for --backend torch.")
    if requested == "auto":
        if onnx.is_file() and installed("onnxruntime"):
            return "onnxruntime", onnx
        if installed("openvino"):
            return "openvino", runtime_file(directory, "openvino")
        require_runtime("onnxruntime" if onnx.is_file() else "openvino")
    if requested == "onnxruntime" and not onnx.is_file():
        raise InputError(f"{directory} holds an OpenVINO model (model.xml), which ONNX Runtime cannot run; "
                         "use --backend openvino.")
    require_runtime(requested)
    return requested, runtime_file(directory, requested)


def _device_type(device: str | None, backend: str) -> str:
    text = (device or "auto").lower()
    if text in ("auto", "cpu"):
        return "cpu"
    if text.startswith("cuda") and backend == "onnxruntime":
        return "cuda"
    raise InputError(f"An exported model runs on the CPU{' or cuda' if backend == 'onnxruntime' else ''} here, "
                     f"not {device}; use --device cpu.")


class LeanEngine:
    """An exported model ready for inference without torch: runner, numpy preprocessing, labels.

    ``backend`` is "auto" (the runtime the export's files and the installed packages allow:
    ONNX Runtime for model.onnx, OpenVINO for model.xml), "onnxruntime" or "openvino";
    "torch" is an :class:`InputError`. ``dtype`` "float16" stores embeddings as float16
    (the model computes in float32, as the PyTorch engine does on the CPU).
    """

    def __init__(self, directory: str | Path, *, backend: str = "auto", batch_size: int = 16,
                 dtype: str = "float32", draft: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 device: str | None = "auto", source: dict[str, str] | None = None,
                 decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT) -> None:
        self.directory = Path(directory).expanduser()
        if export_format(self.directory) is None:
            raise InputError(f"{self.directory} is not an exported model (model.onnx or model.xml with config.json).")
        if dtype == "bfloat16":
            raise InputError("An exported model runs in float32 here; use --dtype float32, or the weights "
                             "directory for bfloat16.")
        self.backend, path = _pick_backend(self.directory, backend)
        self.config = read_config(self.directory / "config.json")
        processor_path = self.directory / "preprocessor_config.json"
        if not processor_path.is_file():
            raise InputError(f"{self.directory} has no preprocessor_config.json, so its preprocessing is unknown.")
        try:
            self.processor_config = json.loads(processor_path.read_text("utf-8"))
            self.processor = EfficientNetImageProcessor.from_dict(self.processor_config)
            self.pipeline = PixelPipeline.from_processor(self.processor)
        except (ValueError, ConfigError) as exc:
            raise InputError(f"{processor_path}: {exc}") from None
        self.device_type = _device_type(device, self.backend)
        self._model_file, self._batch_size, self._runner = path, batch_size, None
        self.labels = [self.config.id2label.get(i, f"LABEL_{i}") if self.config.id2label else f"LABEL_{i}"
                       for i in range(self.config.num_labels or 0)]
        self.output_numpy_dtype = np.float16 if dtype == "float16" else np.float32
        self.draft = draft
        self.max_pixels = max_pixels
        self.decode_timeout = decode_timeout  # seconds per input's decode (None: no limit)
        self.source = source or {"source": "export", "path": str(self.directory)}
        self.device = self.device_type

    @property
    def runner(self) -> Any:
        """The runtime session, opened on first use (see :meth:`batches` for why not at once)."""
        if self._runner is None:
            # The backend decides the runtime: OpenVINO may run an export's model.onnx.
            self._runner = open_runner(self._model_file, FORMAT_OF[self.backend], dtype="float32",
                                       device_type=self.device_type, batch=self._batch_size)
        return self._runner

    @property
    def transform(self) -> PixelPipeline:
        """The picklable per-image preprocessing the decode workers run."""
        return self.pipeline

    @property
    def open_kwargs(self) -> dict[str, Any]:
        """Decoder options: the pixel limit, and reduced-size JPEG decoding down to 1.5× the resize target."""
        kwargs: dict[str, Any] = {"max_pixels": self.max_pixels}
        if self.draft and self.pipeline.do_resize:
            kwargs.update(draft_options(dict(self.pipeline.size)))
        return kwargs

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        """Classifier logits (float32) for N×3×H×W pixel values."""
        if not self.config.num_labels:
            raise InputError("This model has no classification head (num_labels is 0), so it cannot classify; "
                             "use `effnet embed` for its features.")
        return self.runner.run(pixel_values, ["logits"])["logits"].astype(np.float32, copy=False)

    def topk(self, pixel_values: np.ndarray, k: int, *, threshold: float = 0.0,
             labels: Sequence[str] | None = None) -> list[list[Prediction]]:
        """Top-``k`` softmax predictions per image, dropping scores below ``threshold``."""
        logits = self.logits(pixel_values)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        k = min(k, probs.shape[-1])
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        names = labels if labels is not None else self.labels
        out = []
        for row, indices in zip(probs, order):
            out.append([Prediction(rank=r + 1, index=int(i), label=names[i] if i < len(names) else f"LABEL_{i}",
                                   score=float(row[i]))
                        for r, i in enumerate(indices) if row[i] >= threshold])
        return out

    def features(self, pixel_values: np.ndarray, *, pool: str = "mean", stage: int | None = None,
                 normalize: bool = False) -> np.ndarray:
        """Pooled features (float32): the head's ``hidden_dim`` features, averaged or maximum over H×W."""
        if pool not in POOLS:
            raise InputError(f"pool must be one of {', '.join(POOLS)}; got {pool!r}.")
        self.feature_dim(stage)
        name = "features_max" if pool == "max" else "features"
        feats = self.runner.run(pixel_values, [name])[name].astype(np.float32, copy=False)
        if normalize:  # torch.nn.functional.normalize's rule: divide by max(norm, 1e-12)
            feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
        return feats

    def feature_dim(self, stage: int | None = None) -> int:
        """Width of the rows :meth:`features` returns; stage feature maps are not outputs of an export."""
        if stage is not None:
            raise InputError("--features stage:N needs the PyTorch model, and an export has only the head's "
                             "features; give the weights directory with --backend torch.")
        return int(self.config.hidden_dim)

    def batches(self, paths: Sequence[str], *, batch_size: int, workers: int, start: int = 0) -> Iterator[Any]:
        """Decoded, preprocessed numpy batches of ``paths`` in input order (:func:`effnet_cli.data.pool.start_batches`).

        Even a run of one batch decodes in a worker process: a decoder that crashes must cost its
        input one error record, not take the run with it. The workers start, and the first batches
        decode, while the runtime opens the model: for one photo that hides the decode and the
        workers' start behind the runtime's own start-up.
        """
        from effnet_cli.data.pool import start_batches

        batches = start_batches(paths, self.transform, batch_size=batch_size, workers=workers,
                                open_kwargs=self.open_kwargs, start=start, decode_timeout=self.decode_timeout)
        try:
            self.runner  # noqa: B018 - opened now, while the workers decode
        except BaseException:
            batches.close()
            raise
        return batches


def lean_for_model(directory: str | Path, *, batch_size: int, backend: str = "auto", measured_only: bool = False,
                   cache: Path | None = None) -> tuple[str, Path] | None:
    """The (backend, export directory) that runs the model in ``directory`` without torch; or None.

    A runtime ``backend`` gives its cached export, if any. For ``auto``: None when the model has no
    cached export yet, when ``auto`` measured PyTorch fastest at this batch size, or when the runtime
    is not installed. A measured choice wins; without one, the cached ONNX export in ONNX Runtime,
    else the OpenVINO one, unless ``measured_only`` (a run long enough to measure the backends first).
    """
    if backend != "auto":
        export = find_export(directory, FORMAT_OF[backend], cache=cache)
        return None if export is None else (backend, export)
    choice = find_choice(directory, batch_size, cache=cache)
    if choice == "torch" or (choice is None and measured_only):
        return None
    order = [choice] if choice in FORMAT_OF else ["onnxruntime", "openvino"]
    for runtime in order:
        export = find_export(directory, FORMAT_OF[runtime], cache=cache)
        if export is not None and installed(runtime):
            return runtime, export
    return None
