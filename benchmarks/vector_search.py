"""Which vector search ``effnet index`` uses: exact numpy against faiss-cpu, usearch and voyager.

Synthetic L2-normalised vectors (1,280 wide by default: lite0's pooled width) drawn around cluster
centres, as photo features are, written once to ``--data-dir`` and read memory-mapped; 100 held-out
queries near indexed rows. Each library and size runs in its own process, so its peak RSS is its own:
build time, median query time (one query at a time, k = 10), recall@10 against the exact answer. Run:

    python benchmarks/vector_search.py --sizes 10000 1000000 --data-dir /tmp/vs --json results.json

``--dedupe N`` times dedupe's groups over N rows (half of them altered copies) from every pair against
from each row's approximate neighbours. ``--cli`` also writes an index directory of each size's vectors (with its approximate index) and times
``effnet search`` on it end to end.

Needs ``pip install faiss-cpu usearch voyager`` (or ``--libraries`` naming the ones installed).
``effnet IVF-PQ`` is what ``effnet index`` builds (effnet_cli/similar/ann.py), re-ranked on the memory map.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

K, QUERIES, CHUNK = 10, 100, 50_000
COMMAND = "effnet search (command)"
Search = Callable[[np.ndarray], np.ndarray]


def make_data(path: Path, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around n/50 random centres (clustered, as photo features are), as a memory-mapped .npy."""
    if not path.exists():
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((max(n // 50, 1), dim)).astype(np.float32)
        tmp = path.with_suffix(".part.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, CHUNK):
            rows = min(CHUNK, n - start)
            x = centres[rng.integers(0, len(centres), rows)] + 0.8 * rng.standard_normal((rows, dim), np.float32)
            out[start:start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        tmp.rename(path)
    return np.load(path, mmap_mode="r")


def make_queries(data: np.ndarray) -> np.ndarray:
    """Queries halfway between a random vector and an indexed row (a photo and its altered copy)."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((QUERIES, data.shape[1])).astype(np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True) * 0.5 + np.asarray(data[:QUERIES]) * 0.5
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def build_exact(data: np.ndarray) -> Search:
    from effnet_cli.similar.search import top_k

    return lambda q: top_k(data, q, K)[0]


def build_effnet_ivfpq(data: np.ndarray) -> Search:
    from effnet_cli.similar.ann import build_ann, search_ann

    index = build_ann(data)
    return lambda q: search_ann(index, data, q, K)[0]


def build_faiss_ivfflat(data: np.ndarray) -> Search:
    import faiss

    lists = 2 ** round(np.log2(np.sqrt(len(data))))
    index = faiss.index_factory(data.shape[1], f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(0).choice(len(data), min(len(data), 100_000), replace=False))
    index.train(np.asarray(data[sample]))
    for start in range(0, len(data), CHUNK):
        index.add(np.asarray(data[start:start + CHUNK]))
    index.nprobe = 32
    return lambda q: index.search(q, K)[1]


def build_faiss_hnsw(data: np.ndarray) -> Search:
    import faiss

    index = faiss.IndexHNSWFlat(data.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 64
    for start in range(0, len(data), CHUNK):
        index.add(np.asarray(data[start:start + CHUNK]))
    return lambda q: index.search(q, K)[1]


def _usearch(dtype: str) -> Callable[[np.ndarray], Search]:
    def build(data: np.ndarray) -> Search:
        from usearch.index import Index

        index = Index(ndim=data.shape[1], metric="ip", dtype=dtype)
        for start in range(0, len(data), CHUNK):
            index.add(np.arange(start, start + len(data[start:start + CHUNK])), np.asarray(data[start:start + CHUNK]))
        return lambda q: index.search(q, K).keys

    return build


def build_voyager(data: np.ndarray) -> Search:
    import voyager

    index = voyager.Index(voyager.Space.InnerProduct, num_dimensions=data.shape[1])
    for start in range(0, len(data), CHUNK):
        index.add_items(np.array(data[start:start + CHUNK]))  # voyager wants a writable array
    return lambda q: index.query(q, k=K)[0]


BUILDERS = {"numpy exact": build_exact, "effnet IVF-PQ": build_effnet_ivfpq, "faiss IVF-flat": build_faiss_ivfflat,
            "faiss HNSW32": build_faiss_hnsw, "usearch f32": _usearch("f32"), "usearch i8": _usearch("i8"),
            "voyager": build_voyager}


def measure(name: str, data_path: Path) -> dict[str, Any]:
    """Build, then query one vector at a time (what `effnet search` does per query image)."""
    data = np.load(data_path, mmap_mode="r")
    queries = make_queries(data)
    truth = np.load(data_path.with_suffix(".truth.npy"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    search = BUILDERS[name](data)
    build = time.perf_counter() - start
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(np.asarray(search(q[None, :])).reshape(-1)[:K])
        times.append(time.perf_counter() - start)
    recall = float(np.mean([len(set(map(int, f)) & set(map(int, t))) / K for f, t in zip(found, truth)]))
    return {"library": name, "n": len(data), "dim": data.shape[1], "build_s": build, "anon_mb": _anon_mb(),
            "query_ms": 1000 * float(np.median(times)), "recall_at_10": recall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "start_rss_mb": base}


def _anon_mb() -> float:
    """Private memory held now (RssAnon): peak RSS also counts the memory-mapped file's cached pages."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare(data_dir: Path, n: int, dim: int) -> Path:
    """The data set of ``n`` rows and its exact top-10 (all queries in one blockwise pass)."""
    from effnet_cli.similar.search import top_k

    path = data_dir / f"vectors-{n}x{dim}.npy"
    data = make_data(path, n, dim)
    truth_path = path.with_suffix(".truth.npy")
    if not truth_path.exists():
        np.save(truth_path, top_k(data, make_queries(data), K)[0])
    return path


def cli_search(data_dir: Path, data_path: Path) -> dict[str, Any]:
    """``effnet search`` end to end on an index directory holding the vectors (and their approximate index):
    two queries that are indexed files (their stored vectors; no model is loaded), wall time and peak RSS."""
    from effnet_cli.output import make_dir
    from effnet_cli.similar.store import Entry, IndexWriter, index_lock, is_index

    data = np.load(data_path, mmap_mode="r")
    directory = data_dir / f"index-{len(data)}x{data.shape[1]}"
    queries = [data_dir / f"query{i}.jpg" for i in range(2)]
    for query in queries:
        query.write_bytes(b"an indexed file")  # effnet search reads its stored vector, not the file
    if not is_index(directory):
        entries = [Entry(str(queries[i]) if i < len(queries) else f"/photos/{i:07d}.jpg", 1, 1)
                   for i in range(len(data))]
        with index_lock(make_dir(directory)):
            IndexWriter(directory, {"features": "head", "dim": data.shape[1]}, data.shape[1], 0).commit(
                entries, (data[s:s + CHUNK] for s in range(0, len(data), CHUNK)), approximate=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK, "search", *map(str, queries), "--index", str(directory), "-k",
                           str(K), "--format", "jsonl"], check=True, capture_output=True, text=True)
    peak = int(done.stderr.rsplit("VmHWM:", 1)[1].split()[0])  # kB
    return {"n": len(data), "wall_s": time.perf_counter() - start, "peak_rss_mb": peak / 1024}


# effnet as its console script runs it, then its own peak RSS: the process's VmHWM (ru_maxrss would carry
# over the peak of the process that started it, which held the vectors).
_PEAK = """import sys
from effnet_cli.cli.app import main
sys.argv[0] = "effnet"
try:
    main()
finally:
    print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0], file=sys.stderr)
"""


def dedupe_groups(data_dir: Path, n: int, dim: int, threshold: float = 0.9) -> dict[str, Any]:
    """``effnet dedupe``'s groups over ``n`` rows, half of them altered copies of the other half: every pair
    compared (exact) against each row's approximate neighbours; the times and whether the groups agree."""
    from effnet_cli.similar.ann import build_ann
    from effnet_cli.similar.groups import find_groups
    from effnet_cli.similar.search import normalise
    from effnet_cli.similar.store import Entry

    half = make_data(data_dir / f"vectors-{n // 2}x{dim}.npy", n // 2, dim)
    noise = np.random.default_rng(2).standard_normal(half.shape).astype(np.float32) * 0.01
    vectors = np.concatenate([half, normalise(np.asarray(half) + noise)])
    entries = [Entry(f"/photos/{i}.jpg", i, i) for i in range(len(vectors))]
    start = time.perf_counter()
    exact = find_groups(vectors, entries, threshold=threshold)
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    near = find_groups(vectors, entries, threshold=threshold, approximate=build_ann(vectors))
    near_s = time.perf_counter() - start
    same = [[m.path for m in g.members] for g in near] == [[m.path for m in g.members] for g in exact]
    return {"n": len(vectors), "groups": len(exact), "all_pairs_s": exact_s, "neighbours_s": near_s, "same": same}


def _run_child(name: str, path: Path, n: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """One measurement in a process of its own: its row, or None (said on stdout) when it failed."""
    try:
        done = subprocess.run([sys.executable, __file__, "--child", name, str(path)], capture_output=True,
                              text=True, check=False, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"{n:>9,} {name:<14} did not finish within {args.timeout} s", flush=True)
        return {"library": name, "n": n, "dim": args.dim, "timed_out_s": args.timeout}
    if done.returncode:
        print(f"{n:>9,} {name:<14} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--libraries", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/effnet-vector-search"))
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one library may take at one size")
    parser.add_argument("--dedupe", type=int, metavar="N", help="time dedupe's groups over N rows instead")
    parser.add_argument("--cli", action="store_true", help="also time `effnet search` end to end at each size")
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, path = args.child[0], Path(args.child[1])
        row = {"library": name, **cli_search(path.parent, path)} if name == COMMAND else measure(name, path)
        print(json.dumps(row))
        return
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.dedupe:
        row = dedupe_groups(args.data_dir, args.dedupe, args.dim)
        print(f"{row['n']:>9,} dedupe, {row['groups']:,} groups: every pair {row['all_pairs_s']:.1f} s, "
              f"neighbours (index built included) {row['neighbours_s']:.1f} s, same groups: {row['same']}")
        return
    rows = []
    for n in args.sizes:
        path = prepare(args.data_dir, n, args.dim)
        for name in [*args.libraries, *([COMMAND] if args.cli else [])]:
            row = _run_child(name, path, n, args)
            if row is None:
                continue
            rows.append(row)
            if name == COMMAND:
                print(f"{n:>9,} effnet search, 2 indexed queries: {row['wall_s']:.2f} s, "
                      f"peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
                continue
            print(f"{n:>9,} {name:<14} build {row['build_s']:8.2f} s  query {row['query_ms']:8.3f} ms  "
                  f"recall@10 {row['recall_at_10']:.3f}  peak RSS {row['peak_rss_mb']:.0f} MB  "
                  f"anon {row['anon_mb']:.0f} MB", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
