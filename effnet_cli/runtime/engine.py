"""Model + batches -> predictions and features. No printing, no terminal.

:class:`Engine` owns a loaded model, its preprocessing and the device, and
turns stacked pixel values into top-k predictions or feature rows.
:func:`classify_paths` and :func:`embed_paths` run the whole pipeline over a
list of paths (decode in workers, batch, model) and yield per-batch results in
input order; the CLI and any Python caller consume them as they come, so
memory stays flat however many inputs there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effnet_cli.data import DEFAULT_MAX_PIXELS, iter_batches
from effnet_cli.data.decode import DRAFT_MARGIN, draft_options  # DRAFT_MARGIN: the documented name
from effnet_cli.data.limits import DEFAULT_DECODE_TIMEOUT
from effnet_cli.errors import InputError
from effnet_cli.core.dtypes import parse_dtype as _dtype
from effnet_cli.core.loading import load_directory
from effnet_cli.records.results import Prediction
from effnet_cli.runtime.backends import auto_candidates, choose_backend, measured_choice
from effnet_cli.runtime.cache import runner_for, weights_hash
from effnet_cli.runtime.fused import optimize, resolve_device
from effnet_cli.runtime.index import find_export, record_choice
from effnet_cli.weights.resolve import resolve_files
# The record loops are torch-free (shared with the lean engine); re-exported here, where they used to live.
from effnet_cli.runtime.paths import POOLS, classify_paths, embed_paths, read_labels, require_classifier

__all__ = ["DRAFT_MARGIN", "POOLS", "Engine", "WORKER_NICE", "classify_paths", "embed_paths", "read_labels",
           "require_classifier"]

# Reduced-size JPEG decoding stops at this multiple of the resize target (see Engine.open_kwargs).
# Scheduling priority (nice) of the decode workers when the model runs on the CPU (see iter_batches).
# Normal priority. Measured with b0 over 1,024 camera JPEGs on 2 cores (images/s idle / with one busy
# process pinned to each core): nice 0 150 / 85 (57%), nice 10 168 / 42 (25%), nice 19 173 / 7 (4%).
# A niced worker cannot be given its priority back when other programs start (an unprivileged process
# can only raise its nice), so the idle gain would cost everything on a busy machine.
WORKER_NICE = 0


class Engine:
    """A model ready for inference: optimised copy, device, dtype and preprocessing.

    ``backend`` runs the model in PyTorch ("torch", the default here), in ONNX Runtime or
    OpenVINO (an export made once and cached, see :mod:`effnet_cli.runtime.cache`), or "auto": the
    fastest of those that can run it at ``batch_size``, measured once per model, batch size and
    machine (the CLI's default). With ``measure=False``, "auto" takes a remembered measurement
    or PyTorch, and never exports or measures; ``announce`` hears when a measurement starts (None)
    and its result (images/s per backend). ``threads`` caps a runtime's CPU threads (None: every
    usable core), for processes that share the machine with other model processes.
    :attr:`backend` says which one runs.
    """

    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT  # seconds per input's decode (None: no limit)

    def __init__(self, model: torch.nn.Module, processor: Any, *, device: str | torch.device | None = "auto",
                 dtype: str | torch.dtype | None = None, compile: bool = False, fast: bool = True,
                 draft: bool = True, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT, backend: str = "torch",
                 batch_size: int = 16, measure: bool = True,
                 announce: Callable[[dict[str, float] | None], None] | None = None,
                 files: str | Path | None = None, first_export: Callable[[], None] | None = None,
                 threads: int | None = None) -> None:
        self.device = resolve_device(device)
        requested = _dtype(dtype) or torch.float32
        # CPUs have no fast float16 convolutions: compute in float32 there (outputs may still be stored as float16).
        self.dtype = torch.float32 if (self.device.type == "cpu" and requested == torch.float16) else requested
        self.output_dtype = requested
        self.processor = processor
        self.config = model.config
        needs_torch = ("--compile" if compile else "the unoptimised model" if not fast
                       else "preprocessing without a fixed size" if processor.input_size is None else None)
        dtype_name = str(self.dtype).split(".")[-1]
        self.backend = choose_backend(backend, device_type=self.device.type, dtype=dtype_name,
                                      needs_torch=needs_torch)
        weights = None  # the weights' hash keys both auto's record and the export: computed once, if needed
        if self.backend == "auto":  # several candidates: the fastest here, measured once and remembered
            weights = weights_hash(model)
            candidates = auto_candidates(device_type=self.device.type, dtype=dtype_name, needs_torch=needs_torch)
            try:
                measured = measured_choice(model, processor, candidates, dtype=dtype_name, batch=batch_size,
                                           measure=measure, announce=announce, weights=weights)
            except InputError:  # no writable cache for exports: PyTorch needs none
                measured = None
            if measured is not None and files is not None and dtype_name == "float32":
                record_choice(files, batch_size, measured)  # later runs find it without torch
            self.backend = measured or "torch"
            if measured is None and first_export is not None and "onnxruntime" in candidates and self.config.num_labels:
                # Not measured (a short run): export once for ONNX Runtime, so later runs start without torch.
                if files is None or find_export(files, "onnx") is None:  # only an export to be made is announced
                    first_export()
                self.backend = "onnxruntime"
        self.runner: Any = None
        if self.backend != "torch":
            try:
                self.runner = runner_for(model, processor, self.backend, dtype=dtype_name, batch=batch_size,
                                         device_type=self.device.type, weights=weights, files=files,
                                         threads=threads)
            except InputError:
                if backend != "auto":
                    raise
                self.backend = "torch"  # auto without a writable cache for its export: PyTorch needs none
        if self.backend != "torch":
            # Kept for what the export has no output for (stage features); optimised only if asked to run.
            self._plain = model.eval()
            self._model: torch.nn.Module | None = None
        else:
            self._model = (optimize(model, device=self.device, dtype=self.dtype, compile=compile) if fast
                           else model.to(device=self.device, dtype=self.dtype).eval())
        self.labels = [self.config.id2label.get(i, f"LABEL_{i}") for i in range(self.config.num_labels)]
        self.draft = draft
        self.max_pixels = max_pixels
        self.decode_timeout = decode_timeout
        self.source = getattr(model, "source", None)

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch model this engine runs (with another backend: made on first use, for stage features)."""
        if self._model is None:
            self._model = optimize(self._plain, device=self.device, dtype=self.dtype)
        return self._model

    @model.setter
    def model(self, value: torch.nn.Module) -> None:
        self._model = value

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, revision: str | None = None, **kwargs: Any) -> Engine:
        """Load weights by name (see :func:`effnet_cli.load_pretrained`) and prepare them for inference."""
        directory, source = resolve_files(name_or_path, revision=revision)
        model, processor = load_directory(directory)
        model.source = source
        return cls(model, processor, files=directory, **kwargs)

    # ------------------------------------------------------------ transforms
    @property
    def transform(self) -> Any:
        """The picklable per-image preprocessing the decode workers run."""
        return self.processor.preprocess_pil

    @property
    def open_kwargs(self) -> dict[str, Any]:
        """Decoder options: the pixel limit, and reduced-size JPEG decoding down to 1.5× the resize target."""
        kwargs: dict[str, Any] = {"max_pixels": self.max_pixels}
        if self.draft and self.processor.do_resize:
            kwargs.update(draft_options(self.processor.size))
        return kwargs

    @property
    def output_numpy_dtype(self) -> type:
        """dtype of embedding rows: float16 when float16 was asked for (half the file), else float32."""
        return np.float16 if self.output_dtype == torch.float16 else np.float32

    def _to_device(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        # optimize()'s bfloat16 model reads float32 pixels (its stem is float32); others read self.dtype.
        dtype = getattr(self._model, "input_dtype", self.dtype)
        return x.to(dtype).contiguous(memory_format=torch.channels_last)

    # ---------------------------------------------------------------- model
    @torch.inference_mode()
    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Classifier logits (float32, on the CPU) for N×3×H×W pixel values."""
        require_classifier(self)
        if self.runner is not None:
            return torch.from_numpy(self.runner.run(pixel_values.numpy(), ["logits"])["logits"])
        return self.model(self._to_device(pixel_values)).logits.float().cpu()

    def topk(self, pixel_values: torch.Tensor, k: int, *, threshold: float = 0.0,
             labels: Sequence[str] | None = None) -> list[list[Prediction]]:
        """Top-``k`` softmax predictions per image, dropping scores below ``threshold``."""
        probs = torch.softmax(self.logits(pixel_values), dim=-1)
        k = min(k, probs.shape[-1])
        scores, indices = probs.topk(k, dim=-1)
        names = labels if labels is not None else self.labels
        out = []
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist()):
            out.append([
                Prediction(rank=r + 1, index=i, label=names[i] if i < len(names) else f"LABEL_{i}", score=s)
                for r, (s, i) in enumerate(zip(row_scores, row_indices)) if s >= threshold
            ])
        return out

    @torch.inference_mode()
    def features(self, pixel_values: torch.Tensor, *, pool: str = "mean", stage: int | None = None,
                 normalize: bool = False) -> torch.Tensor:
        """Pooled features (float32, CPU): the head's ``hidden_dim`` features, or stage ``stage`` (1-based)."""
        if pool not in POOLS:
            raise InputError(f"pool must be one of {', '.join(POOLS)}; got {pool!r}.")
        if self.runner is not None and stage is None:
            name = "features_max" if pool == "max" else "features"
            feats = torch.from_numpy(self.runner.run(pixel_values.numpy(), [name])[name])
        else:
            base = getattr(self.model, "efficientnet", self.model)
            x = self._to_device(pixel_values)
            fmap = base(x).last_hidden_state if stage is None else base.stage_output(x, stage - 1)
            feats = (fmap.amax(dim=(2, 3)) if pool == "max" else fmap.mean(dim=(2, 3))).float()
        if normalize:
            feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu()

    def feature_dim(self, stage: int | None = None) -> int:
        """Width of the rows :meth:`features` returns."""
        if stage is None:
            return int(self.config.hidden_dim)
        stages = self.config.stages()
        if not 1 <= stage <= len(stages):
            raise InputError(f"--features stage:N needs N in 1..{len(stages)}; got {stage}.")
        return stages[stage - 1].out_channels

    def batches(self, paths: Sequence[str], *, batch_size: int, workers: int, start: int = 0) -> Iterator[Any]:
        """Decoded, preprocessed batches of ``paths`` in input order (see :func:`effnet_cli.data.iter_batches`)."""
        # On the CPU the decode workers compete with the model's threads: they run niced, in the gaps.
        return iter_batches(paths, self.transform, batch_size=batch_size, workers=workers,
                            open_kwargs=self.open_kwargs, start=start, decode_timeout=self.decode_timeout,
                            worker_nice=WORKER_NICE if self.device.type == "cpu" else 0)
