"""``load_pretrained`` with a backend: the PyTorch model, or the same model run by ONNX Runtime or OpenVINO.

    model, processor = load_pretrained("lite0", backend="onnxruntime")
    out = model(model.preprocess(image))  # or processor(image, return_tensors="np")["pixel_values"]
    out.logits          # N×num_labels float32 numpy array
    out.pooler_output   # N×hidden_dim: the head's features, averaged over H×W

With ``backend="torch"`` (the default) this is :func:`effnet_cli.core.loading.load_pretrained`.
With a runtime, the model is exported once into effnet's cache (which imports torch that once)
and later calls find the export through the torch-free index (:mod:`effnet_cli.runtime.index`),
so a process that only runs exported models never imports torch. A directory written by
``effnet export`` is run as it is, by the runtime its files allow unless ``backend`` names one.
"auto" gives the runtime model when an export is cached already, else the PyTorch model; the
runtime model then runs each batch size in whichever of ONNX Runtime and OpenVINO is faster for it
on this machine (measured at its first call, and remembered: :class:`RuntimeModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.host import installed
from effnet_cli.runtime.index import find_choice, record_choice
from effnet_cli.runtime.lean import LeanEngine, export_format, lean_for_model, runtime_file
from effnet_cli.runtime.runners import FILE_OF, FORMAT_OF, open_runner

__all__ = ["RuntimeModel", "RuntimeOutput", "load_pretrained"]

LOAD_BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


@dataclass
class RuntimeOutput:
    """What :class:`RuntimeModel` returns: the PyTorch model's outputs, as numpy arrays."""

    logits: np.ndarray | None  # N×num_labels (None for a model without a classification head)
    pooler_output: np.ndarray  # N×hidden_dim: the last feature map averaged over H×W

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


class RuntimeModel:
    """An exported model called like the PyTorch one: N×3×H×W float32 pixel values in, numpy outputs out.

    ``backend="auto"`` with both runtimes installed runs each batch size in the faster of the two
    on this machine: the first call with a new batch size times both on that very input (a few
    interleaved rounds, about a second for b0, :func:`effnet_cli.runtime.backends.time_backends`)
    unless a choice for it is remembered, and remembers the winner in effnet's export index when
    the model came from its files (``model_files``), so later processes start with it.
    """

    def __init__(self, directory: str | Path, *, backend: str = "auto", source: dict[str, str] | None = None,
                 model_files: str | Path | None = None) -> None:
        self.engine = LeanEngine(directory, backend=backend, source=source, batch_size=1)
        self.config = self.engine.config
        self.backend = self.engine.backend  # the runtime of the last call (auto may pick per batch size)
        self.source = self.engine.source
        self.directory = self.engine.directory
        self.model_files = model_files
        self._runners: dict[str, Any] = {}
        self._chosen: dict[int, str] = {}  # batch size -> runtime, once measured or remembered
        self._candidates = _auto_candidates(self.directory) if backend == "auto" else [self.engine.backend]

    def _runner(self, backend: str) -> Any:
        if backend == self.engine.backend:
            return self.engine.runner
        if backend not in self._runners:
            self._runners[backend] = open_runner(runtime_file(self.directory, backend), FORMAT_OF[backend])
        return self._runners[backend]

    def _backend_for(self, x: np.ndarray, names: list[str]) -> str:
        """The runtime for a batch of ``len(x)``: the only candidate, the remembered choice, or measured now."""
        batch = len(x)
        if len(self._candidates) < 2:
            return self._candidates[0]
        if batch not in self._chosen:
            remembered = None
            if self.model_files is not None:
                remembered = find_choice(self.model_files, batch)
                if remembered not in self._candidates:
                    remembered = find_choice(self.model_files, batch, runtimes_only=True)
            if remembered in self._candidates:
                self._chosen[batch] = remembered
            else:
                self._chosen[batch] = self._measure(x, names)
        return self._chosen[batch]

    def _measure(self, x: np.ndarray, names: list[str]) -> str:
        """Time the candidates on ``x``, remember the faster in the index (when there is one), return it."""
        import time

        from effnet_cli.runtime.backends import time_backends

        calls = {}
        for backend in self._candidates:
            runner = self._runner(backend)

            def call(runner: Any = runner) -> None:
                runner.run(x, names)

            call()  # warm-up: first-call allocations, OpenVINO's compilation
            start = time.perf_counter()
            call()
            calls[backend] = (call, time.perf_counter() - start)
        rates = time_backends(calls, len(x))
        choice = max(rates, key=rates.__getitem__)
        if self.model_files is not None:
            record_choice(self.model_files, len(x), choice, runtimes_only=True)
        return choice

    def __call__(self, pixel_values: Any) -> RuntimeOutput:
        """The outputs for ``pixel_values`` (a numpy array, or anything ``np.asarray`` takes, e.g. a CPU tensor)."""
        x = np.ascontiguousarray(np.asarray(pixel_values), dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"pixel_values must be N×3×H×W, got shape {tuple(x.shape)}.")
        names = ["logits", "features"] if self.config.num_labels else ["features"]
        self.backend = self._backend_for(x, names)
        out = self._runner(self.backend).run(x, names)
        return RuntimeOutput(logits=out.get("logits"), pooler_output=out["features"])

    def preprocess(self, images: Any) -> np.ndarray:
        """N×3×H×W float32 pixel values for PIL images (one, or a list), without torch.

        Equal to the processor's ``pixel_values`` (:class:`effnet_cli.core.numpy_pixels.PixelPipeline`).
        """
        from PIL import Image

        images = [images] if isinstance(images, Image.Image) else list(images)
        return np.stack([self.engine.pipeline(image) for image in images])

    def __repr__(self) -> str:
        return f"RuntimeModel({str(self.directory)!r}, backend={self.backend!r})"


def _auto_candidates(directory: Path) -> list[str]:
    """The runtimes that can run the export in ``directory`` here: ONNX Runtime needs model.onnx; OpenVINO reads either."""
    found = [name for name in ("onnxruntime", "openvino") if installed(name)]
    if not (directory / FILE_OF["onnx"]).is_file():
        found = [name for name in found if name == "openvino"]
    return found


def load_pretrained(name_or_path: str | Path, *, backend: str = "torch", revision: str | None = None,
                    cache_dir: str | Path | None = None, local_files_only: bool | None = None,
                    **torch_kwargs: Any) -> tuple[Any, Any]:
    """Load a model and its preprocessing; ``backend`` picks what runs it (see the module's docstring).

    The other arguments are those of :func:`effnet_cli.core.loading.load_pretrained`; ``device``,
    ``dtype`` and ``model_class`` apply to the PyTorch model only.
    """
    if backend not in LOAD_BACKENDS:
        raise InputError(f"backend must be one of {', '.join(LOAD_BACKENDS)}, got {backend!r}.")
    if export_format(name_or_path) is not None:  # a directory written by `effnet export`
        model = RuntimeModel(name_or_path, backend="auto" if backend == "torch" else backend)
        return model, model.engine.processor
    if backend != "torch" and not torch_kwargs:
        found = _cached(name_or_path, backend, revision=revision, cache_dir=cache_dir)
        if found is not None:
            model = RuntimeModel(found[1], backend="auto" if backend == "auto" else found[0], source=found[2],
                                 model_files=found[3])
            return model, model.engine.processor
    from effnet_cli.core.loading import load_pretrained as load_torch

    model, processor = load_torch(name_or_path, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only, **torch_kwargs)
    if backend in ("torch", "auto"):
        return model, processor
    if torch_kwargs:
        raise InputError(f"{', '.join(sorted(torch_kwargs))} apply to the PyTorch model only, not backend={backend!r}.")
    return _export_now(name_or_path, model, processor, backend, revision=revision, cache_dir=cache_dir)


def _cached(name_or_path: str | Path, backend: str, *, revision: str | None,
            cache_dir: str | Path | None) -> tuple[str, Path, dict[str, str], Path] | None:
    """(backend, export directory, source, model files) of an export of the model cached already; None when none."""
    from effnet_cli.errors import EffnetError
    from effnet_cli.weights.resolve import resolve_files

    try:
        files, source = resolve_files(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except EffnetError:
        return None
    found = lean_for_model(files, batch_size=1, backend=backend)
    return None if found is None else (*found, source, files)


def _export_now(name_or_path: str | Path, model: Any, processor: Any, backend: str, *, revision: str | None,
                cache_dir: str | Path | None) -> tuple[RuntimeModel, Any]:
    """Export ``model`` into effnet's cache for ``backend``, record it in the index, and open it."""
    from effnet_cli.runtime.cache import cached_export, is_cached
    from effnet_cli.runtime.runners import FORMAT_OF
    from effnet_cli.runtime.index import record_export
    from effnet_cli.weights.resolve import resolve_files

    export = cached_export(model, processor, FORMAT_OF[backend])
    files, _ = resolve_files(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=True)
    cached = is_cached(export)  # a private export of this run (the cache could not be written) is not remembered
    if cached:
        record_export(files, FORMAT_OF[backend], export)
    runtime = RuntimeModel(export, backend=backend, source=getattr(model, "source", None),
                           model_files=files if cached else None)
    return runtime, runtime.engine.processor
