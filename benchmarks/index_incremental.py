"""Does re-indexing cost what changed? `effnet_cli.Index` on a folder, then updates after adding N files.

The model is loaded once (``Index.build``), so each update's time is the plan (a stat per file), the
embedding of the changed files and the commit. Run:

    python benchmarks/index_incremental.py FOLDER   # e.g. the near-duplicate set of near_duplicates.py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--adds", type=int, nargs="+", default=[0, 10, 50, 0])
    args = parser.parse_args()
    from effnet_cli.similar import Index

    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / "library"
        shutil.copytree(args.folder, library)
        start = time.perf_counter()
        index = Index.build([library], Path(tmp) / "idx")
        print(f"build: {len(index)} files in {time.perf_counter() - start:.1f} s (model load included)")
        originals = sorted(library.glob("*.jpg"))
        made = 0
        for adds in args.adds:
            for i in range(adds):
                shutil.copy(originals[i % len(originals)], library / f"added-{made}.jpg")
                made += 1
            start = time.perf_counter()
            summary = index.add([library])
            print(f"{adds:>3} files added: {summary.line()} in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
