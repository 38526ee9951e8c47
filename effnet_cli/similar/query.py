"""Search and dedupe over an index or over images embedded on the fly; the settings an index records."""

from __future__ import annotations

import os
from functools import partial
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from effnet_cli.records.results import EmbedBatch, Result
from effnet_cli.scale.spec import EngineSpec, run_settings
from effnet_cli.records.pathtext import display_path
from effnet_cli.similar import ann
from effnet_cli.similar.build import entry_of
from effnet_cli.similar.features import DEFAULT_FEATURES, feature_dim
from effnet_cli.similar.search import normalise, top_k
from effnet_cli.similar.store import Entry, StoredIndex

__all__ = ["Hit", "QueryResult", "approximate_of", "embed_entries", "index_settings", "search_index", "spec_of"]

Embedder = Callable[[Sequence[str]], Iterator[EmbedBatch]]


@dataclass(frozen=True)
class Hit:
    """One neighbour of a query: its rank (1 = nearest), the indexed file, the cosine similarity."""

    rank: int
    path: str
    score: float


@dataclass(frozen=True)
class QueryResult:
    """A query's neighbours, best first, or the reason it has none (``error``)."""

    query: str
    hits: list[Hit]
    error: str | None = None


def index_settings(engine: Any, spec: EngineSpec, features: str = DEFAULT_FEATURES) -> dict[str, Any]:
    """The settings an index records and checks: :func:`run_settings` with the kind and width of its rows.

    The backend is left out: the runtimes agree within 1e-4, which moves no cosine similarity that matters,
    and an update of ten files must not be refused because ``auto`` chose another runtime for them.
    """
    settings = run_settings(engine, spec, features=features, dim=feature_dim(engine, features))
    settings.pop("backend")
    return settings


def spec_of(settings: dict[str, Any], backend: str = "torch", batch_size: int = 16) -> EngineSpec:
    """The engine an index's own settings name, to embed queries that are not in it."""
    weights = str(settings.get("weights", ""))
    revision = weights.removeprefix("revision:") if weights.startswith("revision:") else None
    return EngineSpec(name=settings["model"], revision=revision, dtype=settings["dtype"],
                      draft=settings["decode"] == "reduced", max_pixels=settings["max_pixels"], backend=backend,
                      batch_size=batch_size)


def embed_entries(embed: Embedder, paths: Sequence[str]) -> tuple[list[Entry], np.ndarray, list[Result]]:
    """Embed ``paths``: the entries that succeeded (input order), their normalised rows, the failures."""
    entries, rows, failures = [], [], []
    for batch in embed(paths):
        feats = normalise(batch.features)
        base = min((r.row for r in batch.results if r.row is not None), default=0)
        for result in batch.results:
            if not result.ok:
                failures.append(result)
                continue
            entries.append(entry_of(result.path, False) or Entry(result.path, -1, -1))
            rows.append(feats[result.row - base])
    width = rows[0].shape[0] if rows else 0
    return entries, (np.stack(rows) if rows else np.zeros((0, width), np.float32)), failures


def approximate_of(stored: StoredIndex) -> tuple[Any, str | None]:
    """The approximate index to search ``stored`` with, or None and, for a large index, why search is exact."""
    rebuild = f"`effnet index` on {display_path(stored.directory)} builds it"
    if stored.ann_file is None:
        if len(stored) < ann.MIN_ROWS:
            return None, None  # small: the exact product is the choice, not a fallback
        if not ann.available():
            return None, (f"exact search over {len(stored):,} vectors: the approximate index needs faiss-cpu "
                          f"(pip install 'effnet[similar]')")
        return None, f"exact search over {len(stored):,} vectors: this index has no approximate index yet; {rebuild}"
    if not ann.available():
        return None, f"exact search: {stored.ann_file} needs faiss-cpu (pip install 'effnet[similar]')"
    try:
        return ann.read_ann(stored.directory / stored.ann_file, len(stored)), None
    except (OSError, RuntimeError, ValueError) as exc:  # damaged or not this generation's: never trusted
        return None, f"exact search: {stored.ann_file} cannot be used ({str(exc).splitlines()[0]}); {rebuild}"


def search_index(stored: StoredIndex, queries: Sequence[str], k: int, embed: Embedder,
                 approximate: Any = None) -> list[QueryResult]:
    """The ``k`` nearest indexed files of each query, in query order.

    A query already in the index uses its stored vector and is not its own neighbour; any other query is
    embedded (``embed`` is only called when there is one), and one that cannot be decoded gets its error.
    ``approximate``: the index's approximate index (:func:`approximate_of`); None: exact search.
    """
    own = {q: stored.row_of(os.path.abspath(q)) for q in queries}
    fresh = [q for q in queries if own[q] is None]
    vectors: dict[str, np.ndarray] = {q: np.asarray(stored.vectors[own[q]]) for q in queries if own[q] is not None}
    errors: dict[str, str] = {}
    if fresh:
        for batch in embed(fresh):
            feats = normalise(batch.features)
            base = min((r.row for r in batch.results if r.row is not None), default=0)
            for result in batch.results:
                if result.ok:
                    vectors[result.path] = feats[result.row - base]
                else:
                    errors[result.path] = result.error or "failed"
    asked = [q for q in queries if q in vectors]
    found: dict[str, QueryResult] = {}
    if asked:
        nearest = top_k if approximate is None else partial(ann.search_ann, approximate)
        rows, scores = nearest(stored.vectors, np.stack([vectors[q] for q in asked]), k, [own[q] for q in asked])
        for q, r, s in zip(asked, rows, scores):
            hits = [Hit(rank + 1, stored.entries[row].path, float(score))
                    for rank, (row, score) in enumerate(zip(r.tolist(), s.tolist())) if row >= 0]
            found[q] = QueryResult(q, hits)
    return [found.get(q) or QueryResult(q, [], errors.get(q, "failed")) for q in queries]
