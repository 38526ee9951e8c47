"""The lean runtime's two steady-state figures: the Python API's forward, and 1,000 JPEGs through the CLI.

    python benchmarks/lean.py                 # both sections, 3 rounds (api: in each of 5 sets)
    python benchmarks/lean.py --only api --sets 7 --rounds 12

``api``: b0 at 224 px, batch 1 and 16, ``load_pretrained(model, backend="auto")`` (the export
cached beforehand; auto's per-batch-size choice measured in a first, untimed process) against
ONNX Runtime and OpenVINO used directly on the same export (benchmarks/contenders.py, each set up
as its documentation recommends), every contender in its own process. The processes of a set are
started together and timed in turn, round after round (40 calls at batch 1, 6 at batch 16, each
after two untimed ones), so that every contender runs under the same conditions; a set's ratio is
the median over its rounds of the API's images/s over the better runtime's, and the table gives
the median of the sets. A second ONNX Runtime process in every set is the control: its ratio to the
first is what two processes running the same thing differ by. The API call's own cost is the Python
around ONNX Runtime's ``session.run`` (benchmarks/contenders.py ``call-cost``: the session replaced by a
stub returning outputs computed beforehand), less the same stub called directly.

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
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import prepare  # noqa: E402
from measure import run_child, wait_for_quiet  # noqa: E402
from run_common import PY, contender_json, log, middle_rate  # noqa: E402

API_LIBS = ("effnet-api", "onnxruntime", "openvino")
# A second ONNX Runtime process beside the first: how far two processes running the very same thing
# differ, the resolution of every ratio in the table.
CONTROL = "onnxruntime-again"


def _forward(lib: str, batch: int, iters: int) -> float:
    row = contender_json(["forward", "--lib", lib, "--variant", "b0", "--batch", str(batch), "--warmup", "3",
                          "--iters", str(iters)])
    return float("nan") if row is None else float(row["images_per_s"])


class _Server:
    """One contender's process (contenders.py serve-forward), set up once and timed on request."""

    def __init__(self, lib: str, batch: int) -> None:
        self.proc = subprocess.Popen([PY, str(HERE / "contenders.py"), "serve-forward", "--lib",
                                      lib.removesuffix("-again"), "--variant", "b0", "--batch", str(batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{lib} at batch {batch} failed to start")

    def rate(self, iters: int) -> float:
        self.proc.stdin.write(f"{iters}\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline())["images_per_s"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def run_api(sets: int, rounds: int) -> list[dict[str, Any]]:
    """Per batch size: each contender's median images/s, and per set of processes the median ratio of the rounds.

    A set is one fresh process per contender (and the control), started in rotated order; in each
    round every process is timed once, one after the other in rotated order, so all of them run under
    the same conditions (on a shared host the same process ran at 190 or at 260 images/s from one
    second to the next). The ratios then differ by what each process drew at its start, which the
    control shows.
    """
    rows = []
    libs = (*API_LIBS, CONTROL)
    for batch in (1, 16):
        _forward("effnet-api", batch, 3)  # auto measures and remembers its choice here, untimed
        iters = 40 if batch == 1 else 6
        rates: dict[str, list[float]] = {lib: [] for lib in libs}
        ratios, controls = [], []
        for s in range(sets):
            wait_for_quiet()
            order = libs[s % len(libs):] + libs[:s % len(libs)]
            servers = {lib: _Server(lib, batch) for lib in order}
            got: dict[str, list[float]] = {lib: [] for lib in libs}
            for r in range(rounds):
                for lib in order[r % len(order):] + order[:r % len(order)]:
                    got[lib].append(servers[lib].rate(iters))
            for server in servers.values():
                server.close()
            ratios.append(statistics.median(api / max(ort, ov) for api, ort, ov in
                                            zip(*(got[lib] for lib in API_LIBS))))
            controls.append(statistics.median(a / b for a, b in zip(got[CONTROL], got["onnxruntime"])))
            for lib in libs:
                rates[lib] += got[lib]
            log(f"api b{batch} set {s}: API / better runtime {ratios[-1]:.3f}, control {controls[-1]:.3f}; "
                + ", ".join(f"{lib} {statistics.median(got[lib]):.1f}" for lib in libs))
        cost = contender_json(["call-cost", "--variant", "b0", "--batch", str(batch)])
        rows.append({"batch": batch, **{lib: statistics.median(v) for lib, v in rates.items()},
                     "ratio": statistics.median(ratios), "ratios": ratios,
                     "control": statistics.median(controls), "controls": controls,
                     "call_us": float("nan") if cost is None else cost["api_us"] - cost["direct_us"]})
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
             "API ÷ the better runtime (median of sets; each set) | control: ONNX Runtime ÷ ONNX Runtime | "
             "the API call's own cost |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        share = row["call_us"] * row["effnet-api"] / row["batch"] / 1e4  # µs over the µs of one call, in %
        lines.append(f"| {row['batch']} | {row['effnet-api']:.1f} | {row['onnxruntime']:.1f} | {row['openvino']:.1f} | "
                     f"{row['ratio']:.3f}× ({', '.join(f'{x:.3f}' for x in row['ratios'])}) | "
                     f"{row['control']:.3f}× ({', '.join(f'{x:.3f}' for x in row['controls'])}) | "
                     f"{row['call_us']:.1f} µs ({share:.2f}% of a call) |")
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
    parser.add_argument("--rounds", type=int, default=3, help="api: rounds in each set; thousand: rounds (at least 3)")
    parser.add_argument("--sets", type=int, default=5, help="api: fresh sets of processes (at least 3)")
    parser.add_argument("--only", choices=("api", "thousand"), help="one section only")
    args = parser.parse_args()
    rounds = max(3, args.rounds)
    os.environ.setdefault("EFFNET_CACHE", str(prepare.OUT / "effnet-cache-lean"))
    prepare.make_weights("b0")
    from effnet_cli.host import cpu_name

    header = f"CPU: {cpu_name()}; {os.cpu_count()} logical cores"
    out = []
    if args.only in (None, "api"):
        sets = max(3, args.sets)
        out += [f"{header}; {sets} sets of processes, {rounds} rounds in each", "", api_table(run_api(sets, rounds)), ""]
    if args.only in (None, "thousand"):
        out += [f"{header}; medians of {rounds} interleaved rounds", "", thousand_table(run_thousand(rounds)), ""]
    out.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("\n".join(out))


if __name__ == "__main__":
    main()
