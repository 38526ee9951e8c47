"""The approximate index of a large index: faiss IVF-PQ four-bit codes, answers re-ranked on the memory-mapped rows.

Chosen by the measurement in docs/benchmarks.md ("Vector search"): an inverted file of product-quantised
codes builds in about a minute for a million rows on two cores (the graph indexes did not within ten),
holds 32 bytes and an id a row in memory (the vectors stay memory-mapped on disk), and re-ranking its
best :data:`RERANK` candidates by the exact cosine gives exact scores for what it returns
(recall@10 0.989 at 1,000,000 rows).

Below :data:`MIN_ROWS` rows the exact matrix product answers in milliseconds and nothing is built.
faiss-cpu is optional (``pip install 'effnet[similar]'``): without it search stays exact.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.output.atomic import atomic_file
from effnet_cli.similar.search import normalise

__all__ = ["MIN_ROWS", "NEIGHBOURS", "PROBE_SHARE", "RERANK", "available", "build_ann", "pairs_near", "read_ann",
           "search_ann", "wanted", "write_ann"]

MIN_ROWS = 200_000  # from the measurement: the exact scan takes 32-52 ms a query at 100,000 rows, twice that here
PROBE_SHARE = 2  # scan half the inverted lists: at 1M rows recall@10 0.77 with 32 of 1,024 lists, 0.99 with 512
RERANK = 100  # candidates re-scored exactly (at least k); 300 or 1,000 found no more on the benchmark
NEIGHBOURS = 32  # dedupe: each row's candidate pairs (a bigger group is still joined through its members' links)
_RERANK_BLOCK = 64  # queries re-ranked at once: 64 × 101 candidate rows of 1,280 floats is 33 MB
_TRAIN_MAX = 65_536  # rows sampled to train the lists and the codes: 40 a list (faiss asks for 39)
_MIN_TRAIN = 16  # fewer rows cannot train the 16 centres of a four-bit code
_TRAIN_ITERATIONS = 10  # k-means iterations; the re-ranking makes up for rough centres


def available() -> bool:
    """Whether faiss-cpu is installed (the optional ``similar`` extra)."""
    return importlib.util.find_spec("faiss") is not None


def wanted(rows: int) -> bool:
    """Whether an index of ``rows`` rows gets an approximate index: large enough, and faiss installed."""
    return rows >= max(MIN_ROWS, _MIN_TRAIN) and available()


def _shape(n: int, dim: int) -> tuple[int, int]:
    """(lists, codes) for ``n`` rows of ``dim``: ~√n lists, up to 64 four-bit codes a row (faiss fast scan).

    Four-bit codes train in seconds (eight-bit ones took over a minute on two cores) and, re-ranked exactly,
    lose next to nothing (docs/benchmarks.md).
    """
    lists = 2 ** max(0, min(16, round(math.log2(max(math.sqrt(n), 1)))))
    lists = max(1, min(lists, n // 39 or 1))  # faiss wants ~39 training rows a list
    codes = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)
    return lists, codes


def build_ann(vectors: np.ndarray, block_rows: int = 32_768) -> Any:
    """An IVF-PQ index (inner product) over the rows of ``vectors`` (memory-mapped: read in blocks)."""
    import faiss

    n, dim = vectors.shape
    lists, codes = _shape(n, dim)
    index = faiss.index_factory(dim, f"IVF{lists},PQ{codes}x4fs", faiss.METRIC_INNER_PRODUCT)
    for params in (index.cp, index.pq.cp):
        params.niter = _TRAIN_ITERATIONS
        params.min_points_per_centroid = 1  # a small index trains on what it has, without faiss's warning
    rng = np.random.default_rng(0)  # a fixed sample: the same vectors give the same index
    size = min(n, _TRAIN_MAX, max(40 * lists, 1024))
    sample = np.sort(rng.choice(n, size=size, replace=False))
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, n, block_rows):
        index.add(np.ascontiguousarray(vectors[start:start + block_rows], dtype=np.float32))
    return index


def write_ann(index: Any, target: Path) -> None:
    """Publish ``index`` as ``target`` atomically (through the output layer)."""
    import faiss

    with atomic_file(target) as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))


def read_ann(path: Path, rows: int) -> Any:
    """The index in ``path``; ValueError when it does not hold ``rows`` rows (not this generation's)."""
    import faiss

    index = faiss.read_index(str(path))
    if index.ntotal != rows:
        raise ValueError(f"{path.name} holds {index.ntotal} rows, the index {rows}")
    return index


def search_ann(index: Any, vectors: np.ndarray, queries: np.ndarray, k: int,
               exclude: list[int | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`effnet_cli.similar.search.top_k`, through ``index``: candidates, re-ranked exactly.

    The scores are exact cosines read from ``vectors``; a row the codes did not rank among the best
    :data:`RERANK` can be missed (recall@10 in docs/benchmarks.md).
    """
    index.nprobe = max(1, index.nlist // PROBE_SHARE)
    depth = min(max(RERANK, k) + 1, len(vectors))  # +1: the query's own row, dropped below
    queries = np.ascontiguousarray(normalise(queries))
    _, candidates = index.search(queries, depth)
    if exclude is not None:
        own = np.array([-2 if row is None else row for row in exclude], dtype=np.int64)
        candidates[candidates == own[:, None]] = -1
    rows, scores = [], []
    for start in range(0, len(queries), _RERANK_BLOCK):
        found = candidates[start:start + _RERANK_BLOCK]
        valid = found >= 0
        needed = np.unique(found[valid])  # sorted rows: one pass over the memory map
        if len(needed) == 0:
            needed = np.zeros(1, dtype=np.int64)
        gathered = np.asarray(vectors[needed], dtype=np.float32)
        picked = gathered[np.searchsorted(needed, np.where(valid, found, needed[0]))]  # b × depth × dim
        exact = np.einsum("bd,bkd->bk", queries[start:start + _RERANK_BLOCK], picked)
        exact[~valid] = -np.inf
        order = np.lexsort((found, -exact))[:, :k]  # best first; ties: the lower row first
        rows.append(np.take_along_axis(np.where(valid, found, -1), order, 1))
        scores.append(np.take_along_axis(exact, order, 1).astype(np.float32))
    best_rows = np.concatenate(rows) if rows else np.zeros((0, k), np.int64)
    best_scores = np.concatenate(scores) if scores else np.zeros((0, k), np.float32)
    if best_rows.shape[1] < k:  # fewer rows than k in the index
        pad = ((0, 0), (0, k - best_rows.shape[1]))
        best_rows = np.pad(best_rows, pad, constant_values=-1)
        best_scores = np.pad(best_scores, pad, constant_values=-np.inf)
    best_rows[~np.isfinite(best_scores)] = -1
    return best_rows, best_scores


def pairs_near(index: Any, vectors: np.ndarray, threshold: float, k: int = NEIGHBOURS,
               block_rows: int = 1024) -> Iterator[tuple[int, int, float]]:
    """Pairs ``(i, j)``, ``i < j``, of rows at least ``threshold`` similar among each row's ``k`` approximate
    neighbours: what :func:`effnet_cli.similar.search.pairs_above` finds, without comparing every pair.

    A pair can come twice (from either row); the groups it joins do not change.
    """
    for start in range(0, len(vectors), block_rows):
        block = np.asarray(vectors[start:start + block_rows], dtype=np.float32)
        own = list(range(start, start + len(block)))
        rows, scores = search_ann(index, vectors, block, min(k, len(vectors)), own)
        for i, (found, score) in enumerate(zip(rows.tolist(), scores.tolist())):
            for row, value in zip(found, score):
                if row >= 0 and value >= threshold:
                    yield min(own[i], row), max(own[i], row), value
