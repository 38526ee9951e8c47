"""Nearest neighbours by cosine similarity over L2-normalised rows: exact, in blocks of a memory-mapped array.

The measurement in docs/benchmarks.md ("Vector search") chose the exact matrix product: at the sizes a
photo library has it answers a query in milliseconds with recall 1, needs no build step and no
dependency, and reads the memory-mapped vectors block by block, so memory stays bounded by
:data:`BLOCK_ROWS` rows whatever the index size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["BLOCK_ROWS", "normalise", "pairs_above", "top_k"]

BLOCK_ROWS = 32_768  # rows of the index read at once: 160 MB of float32 at 1280 wide


def normalise(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _blocks(vectors: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(vectors), BLOCK_ROWS):
        yield start, np.asarray(vectors[start:start + BLOCK_ROWS], dtype=np.float32)


def top_k(vectors: np.ndarray, queries: np.ndarray, k: int,
          exclude: list[int | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors`` most similar to each query: (rows, scores), best first.

    ``exclude[i]``: a row query ``i`` must not return (the query's own row, when it is indexed).
    Fewer than ``k`` rows in the index: the missing places hold row -1 and score -inf.
    """
    queries = normalise(queries)
    q = len(queries)
    best_rows = np.full((q, 0), -1, dtype=np.int64)
    best_scores = np.full((q, 0), -np.inf, dtype=np.float32)
    for start, block in _blocks(vectors):
        scores = queries @ block.T  # q × block
        if exclude is not None:
            for i, row in enumerate(exclude):
                if row is not None and start <= row < start + len(block):
                    scores[i, row - start] = -np.inf
        rows = np.broadcast_to(np.arange(start, start + len(block)), scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows], axis=1)
        keep = min(k, scores.shape[1])
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores, best_rows = np.take_along_axis(scores, part, 1), np.take_along_axis(rows, part, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best_scores, best_rows = np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)
    if best_rows.shape[1] < k:
        pad = k - best_rows.shape[1]
        best_rows = np.pad(best_rows, ((0, 0), (0, pad)), constant_values=-1)
        best_scores = np.pad(best_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    best_rows[~np.isfinite(best_scores)] = -1
    return best_rows, best_scores


def pairs_above(vectors: np.ndarray, threshold: float) -> Iterator[tuple[int, int, float]]:
    """Every pair of rows ``(i, j)``, ``i < j``, whose cosine similarity is at least ``threshold``.

    Blocks of rows against the rows after them: each pair is computed once, memory bounded by two blocks.
    """
    for start, block in _blocks(vectors):
        for other_start, other in _blocks(vectors):
            if other_start + len(other) <= start:
                continue
            scores = block @ other.T
            i, j = np.nonzero(scores >= threshold)
            for a, b in zip(i.tolist(), j.tolist()):
                row, col = start + a, other_start + b
                if row < col:
                    yield row, col, float(scores[a, b])
