"""The lean runtime's two steady-state figures: the Python API's forward, and 1,000 JPEGs through the CLI.

    python benchmarks/lean.py                 # both sections, 3 interleaved rounds
    python benchmarks/lean.py --only api --rounds 5

``api``: b0 at 224 px, batch 1 and 16, ``load_pretrained(model, backend="auto")`` (the export
cached beforehand; auto's per-batch-size choice measured in a first, untimed process) against
ONNX Runtime and OpenVINO used directly on the same export (benchmarks/contenders.py, each set up
as its documentation recommends), every contender in its own process, in interleaved rounds. The
ratio is the API's images/s over the better runtime's, per round; the table gives medians.

``thousand``: ``effnet classify`` over 1,000 camera-sized JPEGs (benchmarks/prepare.py) with b0 and
``--backend onnxruntime``, its whole process tree's memory sampled every half second (summed RSS and
summed PSS; not ``ru_maxrss``, which for a child of this process starts from this process's own size,
torch included, at the fork before the exec), its
rate over the middle half of the records; in the same round, on the same files, the forward alone
(ONNX Runtime through effnet's runner, batch 16) and the lean decode pipeline alone (its worker
processes, draft decoding, preprocessing; no model), so that the two-core ceiling
1 / (1/forward + 1/decode) and the share of it reached come from one round.

Everything runs in a private effnet cache under benchmarks/out; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import prepare  # noqa: E402
from measure import run_child  # noqa: E402
from run_common import PY, contender_json, log, middle_rate  # noqa: E402

API_LIBS = ("effnet-api", "onnxruntime", "openvino")


def _forward(lib: str, batch: int, iters: int) -> float:
    row = contender_json(["forward", "--lib", lib, "--variant", "b0", "--batch", str(batch), "--warmup", "3",
                          "--iters", str(iters)])
    return float("nan") if row is None else float(row["images_per_s"])


def run_api(rounds: int) -> list[dict[str, Any]]:
    """Per batch size: each contender's median images/s and the median per-round ratio of the API to the better runtime."""
    rows = []
    for batch in (1, 16):
        _forward("effnet-api", batch, 3)  # auto measures and remembers its choice here, untimed
        rates: dict[str, list[float]] = {lib: [] for lib in API_LIBS}
        for r in range(rounds):
            for lib in API_LIBS:
                rates[lib].append(_forward(lib, batch, 60 if batch == 1 else 12))
            log(f"api b{batch} round {r}: " + ", ".join(f"{lib} {rates[lib][-1]:.1f}" for lib in API_LIBS))
        ratios = [api / max(ort, ov) for api, ort, ov in zip(*(rates[lib] for lib in API_LIBS))]
        rows.append({"batch": batch, **{lib: statistics.median(v) for lib, v in rates.items()},
                     "ratio": statistics.median(ratios), "ratios": ratios})
    return rows


def run_thousand(rounds: int) -> list[dict[str, Any]]:
    """One row per round: classify's rate and memory, and the forward and decode rates beside it."""
    paths = [str(p) for p in prepare.camera_jpegs(1000)]
    listing = prepare.OUT / "lean-1000.txt"
    listing.write_text("\n".join(paths) + "\n")
    cmd = [PY, "-m", "effnet_cli", "classify", "--model", str(prepare.effnet_dir("b0")), "--backend", "onnxruntime",
           "-f", "jsonl", "-q", "-"]
    _forward("onnxruntime", 16, 1)  # the export made and indexed before any timed run
    rows = []
    for r in range(rounds):
        run = run_child(cmd, stdin_text="\n".join(paths) + "\n")
        forward = _forward("onnxruntime", 16, 20)
        decode = contender_json(["decode", "--variant", "b0", "--lean", "--list", str(listing)])
        decode_rate = float("nan") if decode is None else float(decode["images_per_s"])
        ceiling = 1 / (1 / forward + 1 / decode_rate)
        rate = middle_rate(run, len(paths))
        rows.append({"ok": run.returncode == 0 and len(run.lines) == len(paths), "classify": rate,
                     "forward": forward, "decode": decode_rate, "ceiling": ceiling, "share": rate / ceiling,
                     "tree_rss_mb": run.peak_tree_rss_mb, "tree_pss_mb": run.peak_tree_pss_mb})
        log(f"thousand round {r}: {rows[-1]}")
    return rows


def api_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| batch | `load_pretrained(backend=\"auto\")` | ONNX Runtime directly | OpenVINO directly | "
             "API ÷ the better runtime (median of rounds) |", "| ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['effnet-api']:.1f} | {row['onnxruntime']:.1f} | {row['openvino']:.1f} | "
                     f"{row['ratio']:.2f}× ({', '.join(f'{x:.2f}' for x in row['ratios'])}) |")
    return "\n".join(lines)


def thousand_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| round | classify (images/s) | forward alone | decode alone | ceiling | classify ÷ ceiling | "
             "peak summed RSS (MB) | peak summed PSS (MB) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, row in enumerate(rows):
        lines.append(f"| {i + 1}{'' if row['ok'] else ' (failed)'} | {row['classify']:.1f} | {row['forward']:.1f} | "
                     f"{row['decode']:.1f} | {row['ceiling']:.1f} | {row['share']:.0%} | {row['tree_rss_mb']:.0f} | "
                     f"{row['tree_pss_mb']:.0f} |")
    med = {key: statistics.median(row[key] for row in rows) for key in ("share", "tree_rss_mb", "tree_pss_mb")}
    lines.append(f"| median | | | | | {med['share']:.0%} | {med['tree_rss_mb']:.0f} | {med['tree_pss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (at least 3)")
    parser.add_argument("--only", choices=("api", "thousand"), help="one section only")
    args = parser.parse_args()
    rounds = max(3, args.rounds)
    os.environ.setdefault("EFFNET_CACHE", str(prepare.OUT / "effnet-cache-lean"))
    prepare.make_weights("b0")
    from effnet_cli.host import cpu_name

    header = (f"CPU: {cpu_name()}; {os.cpu_count()} logical cores; medians of {rounds} interleaved rounds")
    out = [header]
    if args.only in (None, "api"):
        out += ["", api_table(run_api(rounds))]
    if args.only in (None, "thousand"):
        out += ["", thousand_table(run_thousand(rounds))]
    out.append(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print("\n".join(out))


if __name__ == "__main__":
    main()
