"""The settings a sharded run carries to its workers and actors: how to load the model, what to compute.

Both are frozen dataclasses built once by the command and pickled as they are
into device workers (``--devices``) and Ray actors (``--engine ray``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from effnet_cli.data.limits import DEFAULT_DECODE_TIMEOUT

__all__ = ["EngineSpec", "RunOptions", "run_settings"]


@dataclass(frozen=True)
class EngineSpec:
    """How to load the model again in another process (a device worker or a Ray actor).

    The revision should be the exact commit the parent resolved, so every
    worker runs the same weights even if the hub moves on meanwhile; likewise
    ``backend`` is the concrete one the parent resolved ("auto" measured once
    there), so every worker runs the same runtime and the output records it.
    """

    name: str
    revision: str | None = None
    dtype: str = "float32"
    compile: bool = False
    draft: bool = True
    max_pixels: int | None = None
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT  # seconds per input's decode (None: no limit)
    backend: str = "torch"  # torch, onnxruntime or openvino; never auto
    batch_size: int = 16  # the runtimes' exports and compiled graphs are sized for it
    threads: int | None = None  # a runtime's CPU threads in each worker (None: its usable cores)

    def build(self, device: str) -> Any:
        """An :class:`effnet_cli.runtime.engine.Engine` on ``device``."""
        from effnet_cli.runtime.engine import Engine

        return Engine.from_pretrained(self.name, revision=self.revision, device=device, dtype=self.dtype,
                                      compile=self.compile, draft=self.draft, max_pixels=self.max_pixels,
                                      decode_timeout=self.decode_timeout,
                                      backend=self.backend, batch_size=self.batch_size, measure=False,
                                      threads=self.threads)


@dataclass(frozen=True)
class RunOptions:
    """What each batch of a sharded run computes: the options of ``embed_paths`` or ``classify_paths``."""

    batch_size: int = 16  # rows per model call
    workers: int = 0  # decode processes (per device worker with --devices)
    pool: str = "mean"  # embed: mean or max over the feature map
    stage: int | None = None  # embed: None for the head's pooled features, else a stage's feature map
    normalize: bool = False  # embed: L2-normalise each row
    top_k: int = 5  # classify
    threshold: float = 0.0  # classify: drop predictions below it
    labels: list[str] | None = None  # classify: names replacing the model's own
    layout: bool = False  # embed: `effnet index`'s layout rows (effnet_cli/similar/features.py), not pooled ones

    def with_workers(self, workers: int) -> RunOptions:
        """A copy with ``workers`` decode processes."""
        return replace(self, workers=workers)

    def embed_width(self, engine: Any) -> int:
        """The width of the rows this run embeds with ``engine``."""
        if self.layout:
            from effnet_cli.similar.features import feature_dim

            return feature_dim(engine, "layout")
        return int(engine.feature_dim(self.stage))

    def embed_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`effnet_cli.runtime.engine.embed_paths`."""
        return dict(pool=self.pool, stage=self.stage, normalize=self.normalize, batch_size=self.batch_size,
                    workers=self.workers)

    def classify_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`effnet_cli.runtime.engine.classify_paths`."""
        return dict(top_k=self.top_k, threshold=self.threshold, labels=self.labels, batch_size=self.batch_size,
                    workers=self.workers)


def _weights_identity(name: str, engine: Any, revision: str | None) -> str:
    """What identifies the weights: the hub commit, else the SHA-256 of the local checkpoint file."""
    from effnet_cli.output.settings import file_sha256

    if revision:
        return f"revision:{revision}"
    source = engine.source or {}
    directory = Path(name)
    for candidate in (directory / "model.safetensors", directory / "pytorch_model.bin"):
        if candidate.is_file():
            return f"sha256:{file_sha256(candidate)}"
    return "source:" + ",".join(f"{k}={v}" for k, v in sorted(source.items()))


def run_settings(engine: Any, spec: EngineSpec, **specific: Any) -> dict[str, Any]:
    """The settings fingerprint of a run, stored in every partial and marker and checked on resume.

    Model identity and weights (hash or hub revision), dtype, the backend that runs the model (runtimes
    agree within 1e-4, not bit for bit, so one output never mixes them; the concrete one the spec's
    workers run), decode mode, pixel limit and the processor's whole preprocessing, plus what the
    command adds (features, pool, normalize, width ...).
    """
    return {"model": spec.name, "weights": _weights_identity(spec.name, engine, spec.revision), "dtype": spec.dtype,
            "backend": spec.backend,
            "decode": "reduced" if spec.draft else "full", "max_pixels": engine.max_pixels,
            "preprocessing": engine.processor.to_dict(), **specific}
