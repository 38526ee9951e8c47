"""Which vector search ``effnet index`` uses: exact numpy against usearch, faiss-cpu (HNSW) and voyager.

Synthetic L2-normalised 1280-d vectors (lite0's pooled width) drawn around cluster centres, as photo
features are; 100 held-out queries. Per library and size: build time, median query time for k=10,
recall@10 against the exact answer, and the memory the index adds (RSS growth). Run:

    python benchmarks/vector_search.py --sizes 10000 100000 --json results.json

Needs ``pip install usearch faiss-cpu voyager`` (or ``--libraries`` naming the ones installed).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any, Callable

import numpy as np

DIM, K, QUERIES = 1280, 10, 100


def vectors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around n/50 random centres (clustered, as features of photos are)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 50, 1), DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows by inner product: one matrix product and an argpartition."""
    scores = queries @ data.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1)


def build_usearch(data: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from usearch.index import Index

    index = Index(ndim=DIM, metric="ip", dtype="f32")
    index.add(np.arange(len(data)), data)
    return lambda q: index.search(q, K).keys


def build_faiss(data: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import faiss

    index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 64
    index.add(data)
    return lambda q: index.search(q, K)[1]


def build_voyager(data: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import voyager

    index = voyager.Index(voyager.Space.InnerProduct, num_dimensions=DIM)
    index.add_items(data)
    return lambda q: index.query(q, k=K)[0]


def build_exact(data: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda q: exact(data, q, K)


BUILDERS = {"numpy exact": build_exact, "usearch": build_usearch, "faiss-cpu HNSW": build_faiss,
            "voyager": build_voyager}


def measure(name: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Build, then query one vector at a time (what `effnet search` does per query image)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    search = BUILDERS[name](data)
    build = time.perf_counter() - start
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(np.asarray(search(q[None, :])).reshape(-1)[:K])
        times.append(time.perf_counter() - start)
    recall = float(np.mean([len(set(map(int, f)) & set(map(int, t))) / K for f, t in zip(found, truth)]))
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    return {"library": name, "n": len(data), "build_s": build, "query_ms": 1000 * float(np.median(times)),
            "recall_at_10": recall, "peak_rss_growth_mb": grown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--libraries", nargs="+", default=list(BUILDERS))
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        data = vectors(n)
        queries = vectors(QUERIES, seed=1) * 0.5 + data[:QUERIES] * 0.5  # near existing rows, as photo queries are
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = exact(data, queries, K)
        for name in args.libraries:
            row = measure(name, data, queries, truth)
            rows.append(row)
            print(f"{n:>9,} {name:<16} build {row['build_s']:8.2f} s  query {row['query_ms']:8.3f} ms  "
                  f"recall@10 {row['recall_at_10']:.3f}  +RSS {row['peak_rss_growth_mb']:.0f} MB", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
