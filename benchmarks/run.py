"""The side-by-side benchmark: effnet against torchvision, timm and transformers, in one run on one machine.

    python benchmarks/run.py --compile --out docs/benchmarks.md --json benchmarks/out/results.json

needs the test extras (transformers, timm) besides effnet itself, downloads
nothing, and takes about 35 minutes on 2 cores. It

1. writes one set of seeded weights for b0 and b7 in every library's layout
   and checks that they compute the same where the architectures coincide
   (benchmarks/prepare.py);
2. times the model forward alone (b0 at 224 px, b7 at 600 px; batch 1 and 16)
   for each library, each in its own process so memory peaks do not mix;
3. times end to end (camera-sized JPEGs -> top-5): the real ``effnet
   classify`` CLI, transformers' ``pipeline("image-classification")``, timm's
   and torchvision's own preprocessing with a DataLoader, all at batch 16;
   then ``effnet classify`` in steady state against effnet's own forward and
   decode pipeline, in interleaved pairs;
4. checks how often draft (reduced-size) JPEG decoding changes a top-1, with
   the bundled Lite0's real weights;
5. measures ``effnet --help`` and the peak memory of ``effnet classify`` over
   1,000 and 10,000 files;
6. measures what each optimisation is worth (benchmarks/ablation.py, and the
   CLI's decode/threads settings);

and writes everything as markdown to ``--out`` (and JSON beside it with --json).
Sections can be chosen with --only (forward,e2e,draft,cli,ablation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import prepare  # noqa: E402
from measure import ChildRun, run_child, wait_for_quiet  # noqa: E402

PY = sys.executable
FORWARD_LIBS = ("effnet", "effnet-engine", "effnet-auto", "onnxruntime", "openvino", "effnet-engine-bf16",
                "effnet-auto-bf16", "openvino-bf16", "torchvision", "timm", "transformers")
E2E_LIBS = ("effnet", "effnet-torch", "onnxruntime", "openvino", "transformers", "timm", "torchvision")
# A measurement is repeated (up to TRIES times) when other programs used more than this share of
# the CPUs while it ran: the machine this runs on may be shared.
MAX_FOREIGN = 0.05
TRIES = 3
DISTURBANCE: list[float] = []  # foreign share of every kept measurement, for the report
SHARED = False  # --shared: measure at once, never wait or repeat (indicative figures on a busy machine)


def quietly(label: str, make: Any) -> ChildRun:
    """``make()`` once the machine is idle, again if something else ran meanwhile; the least disturbed run."""
    best = None
    for attempt in range(1, TRIES + 1):
        if not SHARED:
            wait_for_quiet()
        run = make()
        run.extra["attempts"] = attempt
        if best is None or run.foreign_share < best.foreign_share:
            best = run
        if run.foreign_share <= MAX_FOREIGN or attempt == TRIES:
            break
        log(f"{label}: other programs used {run.foreign_share:.0%} of the CPUs meanwhile; measuring again")
    DISTURBANCE.append(best.foreign_share)
    return best


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------ forward
def forward_plan(quick: bool) -> list[tuple[str, int, int, int, int]]:
    """(variant, batch, warmup, iterations, repeats) per measurement."""
    if quick:
        return [("b0", 16, 1, 3, 1), ("b0", 1, 2, 5, 1)]
    return [("b0", 16, 2, 10, 5), ("b0", 1, 5, 20, 1), ("b7", 1, 1, 3, 1), ("b7", 16, 1, 1, 1)]


def run_forward(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for variant, batch, warmup, iters, repeats in forward_plan(quick):
        results: dict[str, list[dict[str, Any]]] = {lib: [] for lib in FORWARD_LIBS}
        for rep in range(repeats):
            # Rotate the order each repeat, so drift in the machine's load does not favour one library.
            order = FORWARD_LIBS[rep % len(FORWARD_LIBS):] + FORWARD_LIBS[:rep % len(FORWARD_LIBS)]
            for lib in order:
                cmd = [PY, str(HERE / "contenders.py"), "forward", "--lib", lib, "--variant", variant,
                       "--batch", str(batch), "--warmup", str(warmup), "--iters", str(iters)]
                run = quietly(f"forward {variant} batch {batch} {lib}", lambda cmd=cmd: run_child(cmd))
                if run.returncode != 0 or not run.lines:
                    log(f"forward {lib} {variant} b{batch} failed: {run.stderr[-500:]}")
                    continue
                data = json.loads(run.lines[-1])
                data["foreign_share"] = run.foreign_share
                results[lib].append(data)
                log(f"forward {variant} batch {batch} {lib}: {data['images_per_s']:.1f} img/s, "
                    f"{data['peak_rss_mb']:.0f} MB (load {load_average()})")
        for lib, runs in results.items():
            if not runs:
                continue
            rates = [r["images_per_s"] for r in runs]
            rows.append({"variant": variant, "size": runs[0]["size"], "batch": batch, "lib": lib,
                         "images_per_s": statistics.median(rates), "runs": rates, "warmup": warmup, "iters": iters,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                         "foreign_share": max(r["foreign_share"] for r in runs)})
    return rows


# ------------------------------------------------------------------ end to end
def e2e_plan(quick: bool) -> list[tuple[str, int, int]]:
    """(variant, number of images, repeats)."""
    return [("b0", 64, 1)] if quick else [("b0", 256, 3), ("b7", 32, 1)]


def effnet_cmd(variant_dir: Path, inputs: list[str], *, batch: int = 16, extra: list[str] | None = None) -> list[str]:
    exe = shutil.which("effnet")
    base = [exe] if exe else [PY, "-m", "effnet_cli"]
    return base + ["classify", *inputs, "--model", str(variant_dir), "--format", "jsonl", "--top-k", "5",
                   "--batch-size", str(batch), "--quiet", *(extra or [])]


def steady_rate(run: ChildRun, count: int) -> float:
    """Images/s over the second half of the records.

    The first half contains start-up and the batches the decode workers got ahead on meanwhile
    (consumed at the model's solo speed); from the middle on, decode and model share the cores.
    """
    return run.steady_rate(count // 2) if run.returncode == 0 else float("nan")


def _e2e_row(run: ChildRun, *, lib: str, variant: str, count: int, batch: int) -> dict[str, Any]:
    peak = run.peak_rss_mb
    if lib not in ("effnet", "effnet-torch"):  # the script reports its own high-water mark on stderr
        for line in run.stderr.splitlines():
            if line.startswith("{") and "peak_rss_mb" in line:
                peak = json.loads(line)["peak_rss_mb"]
    return {"variant": variant, "lib": lib, "images": count, "batch": batch, "ok": run.returncode == 0
            and len(run.lines) == count, "steady_images_per_s": steady_rate(run, count),
            "overall_images_per_s": run.overall_rate(), "wall_s": run.wall_s, "first_batch_s": run.times[batch - 1]
            if len(run.times) >= batch else None, "peak_rss_mb": peak, "peak_tree_pss_mb": run.peak_tree_pss_mb,
            "stderr_tail": run.stderr[-300:] if run.returncode else "", "foreign_share": run.foreign_share}


def run_e2e(quick: bool) -> list[dict[str, Any]]:
    rows = []
    images = prepare.camera_jpegs(256)
    batch = 16
    for variant, count, repeats in e2e_plan(quick):
        paths = [str(p) for p in images[:count]]
        listing = prepare.OUT / f"e2e-{variant}-{count}.txt"
        listing.write_text("\n".join(paths) + "\n")
        runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in E2E_LIBS}
        for rep in range(repeats):
            # Rotated order, as for the forward rows: drift in the machine's speed favours no one.
            for lib in E2E_LIBS[rep % len(E2E_LIBS):] + E2E_LIBS[:rep % len(E2E_LIBS)]:
                runs[lib].append(_e2e_once(lib, variant, paths, listing, batch))
        for lib, rows_of_lib in runs.items():
            row = dict(sorted(rows_of_lib, key=lambda r: r["steady_images_per_s"])[len(rows_of_lib) // 2])
            row["runs"] = [r["steady_images_per_s"] for r in rows_of_lib]
            row["ok"] = all(r["ok"] for r in rows_of_lib)
            rows.append(row)
    return rows


def _e2e_once(lib: str, variant: str, paths: list[str], listing: Path, batch: int) -> dict[str, Any]:
    """One end-to-end run of one contender."""
    if lib in ("effnet", "effnet-torch"):
        # Paths on stdin: the CLI reads the same list in the same order as the others.
        cmd = effnet_cmd(prepare.effnet_dir(variant), ["-"], batch=batch,
                         extra=["--backend", "torch"] if lib == "effnet-torch" else None)
        stdin = "\n".join(paths) + "\n"
    else:
        cmd = [PY, str(HERE / "contenders.py"), "e2e", "--lib", lib, "--variant", variant,
               "--batch", str(batch), "--workers", "2", "--list", str(listing)]
        stdin = None
    run = quietly(f"e2e {variant} {lib}", lambda: run_child(cmd, stdin_text=stdin))
    row = _e2e_row(run, lib=lib, variant=variant, count=len(paths), batch=batch)
    log(f"e2e {variant} {lib}: {row['steady_images_per_s']:.1f} img/s over the second half, "
        f"{row['wall_s']:.1f} s wall, ok={row['ok']} (load {load_average()}) {row['stderr_tail']}")
    return row


# ------------------------------------------------------------------ sustained
PASSES = 4  # the 256 camera JPEGs, linked 4 times: 1,024 paths, 64 batches


def middle_rate(run: ChildRun, count: int) -> float:
    """Images/s over the middle half of ``count`` records: decode and model both running, nothing buffered."""
    if run.returncode != 0 or len(run.times) < count:
        return float("nan")
    first, last = count // 4, 3 * count // 4
    return (last - first) / (run.times[last - 1] - run.times[first - 1])


def _contender_json(args: list[str]) -> dict[str, Any] | None:
    run = quietly(" ".join(args[:3]), lambda: run_child([PY, str(HERE / "contenders.py"), *args]))
    if run.returncode != 0 or not run.lines:
        log(f"{' '.join(args)} failed: {run.stderr[-500:]}")
        return None
    return json.loads(run.lines[-1])


def run_sustained(quick: bool) -> dict[str, Any]:
    """effnet classify in steady state against effnet's own forward and decode, measured in interleaved pairs.

    The machine's speed drifts over minutes, so each pair measures optimize()'s forward (b0, batch 16), the
    decode pipeline alone and the CLI back to back, and the ratio is taken within the pair.
    """
    paths = [str(p) for p in prepare.camera_passes(256, 2 if quick else PASSES)]
    listing = prepare.OUT / "sustained.txt"
    listing.write_text("\n".join(paths) + "\n")
    pairs = []
    for rep in range(1 if quick else 3):
        fwd = _contender_json(["forward", "--lib", "effnet-engine", "--variant", "b0", "--batch", "16",
                               "--warmup", "3", "--iters", "20"])
        dec = _contender_json(["decode", "--variant", "b0", "--list", str(listing)])
        cmd = effnet_cmd(prepare.effnet_dir("b0"), ["-"])
        run = quietly("sustained classify", lambda: run_child(cmd, stdin_text="\n".join(paths) + "\n"))
        rate = middle_rate(run, len(paths))
        pair = {"forward": fwd["images_per_s"] if fwd else None, "decode": dec["images_per_s"] if dec else None,
                "classify": rate, "ok": run.returncode == 0 and len(run.lines) == len(paths)}
        pairs.append(pair)
        log(f"sustained pair {rep}: forward {pair['forward']}, decode {pair['decode']}, classify {rate:.1f}")
    out: dict[str, Any] = {"images": len(paths), "pairs": pairs}
    # b7: decoding is a rounding error next to the model; one pair, 64 images (4 batches).
    b7_paths = [str(p) for p in prepare.camera_passes(32, 2)][: 32 if quick else 64]
    fwd = _contender_json(["forward", "--lib", "effnet-engine", "--variant", "b7", "--batch", "16",
                           "--warmup", "1", "--iters", "1"])
    run = quietly("sustained classify b7", lambda: run_child(effnet_cmd(prepare.effnet_dir("b7"), ["-"]),
                                                            stdin_text="\n".join(b7_paths) + "\n"))
    out["b7"] = {"images": len(b7_paths), "forward": fwd["images_per_s"] if fwd else None,
                 "classify": run.steady_rate(16) if run.returncode == 0 else float("nan")}
    log(f"sustained b7: {out['b7']}")
    return out


def run_draft(quick: bool) -> dict[str, Any] | None:
    """Fast-decode options (decoder, margin, cropped resize): time per image and top-1 flips (bundled Lite0)."""
    listing = prepare.OUT / "draft.txt"
    listing.write_text("\n".join(str(p) for p in prepare.camera_jpegs(256)[: 32 if quick else 256]) + "\n")
    return _contender_json(["draft", "--list", str(listing), "--rounds", "2" if quick else "5"])


# ------------------------------------------------------------------ CLI
def run_cli(quick: bool) -> dict[str, Any]:
    exe = shutil.which("effnet")
    help_cmd = [exe, "--help"] if exe else [PY, "-m", "effnet_cli", "--help"]
    subprocess.run(help_cmd, capture_output=True)  # warm the page cache
    times = []
    for _ in range(9):
        start = time.perf_counter()
        subprocess.run(help_cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    out: dict[str, Any] = {"help_median_s": statistics.median(times), "help_runs_s": times}
    log(f"effnet --help: median {out['help_median_s']:.3f} s")
    # Memory over many files: a b0 whose preprocessing resizes to 64 px, so 10,000 files take seconds.
    weights = prepare.small_input_dir()  # written by prepare.py
    out["memory"] = []
    for count in ((200, 1000) if quick else (1000, 10000)):
        directory = prepare.tiny_jpegs(count)
        run = quietly(f"classify over {count} files", lambda d=directory: run_child(effnet_cmd(weights, [str(d)], batch=64)))
        row = {"files": count, "ok": run.returncode == 0 and len(run.lines) == count, "wall_s": run.wall_s,
               "peak_rss_mb": run.peak_rss_mb, "peak_tree_pss_mb": run.peak_tree_pss_mb}
        out["memory"].append(row)
        log(f"classify over {count} files: {row['peak_rss_mb']:.0f} MB peak RSS, "
            f"{row['peak_tree_pss_mb']:.0f} MB tree PSS, {row['wall_s']:.1f} s, ok={row['ok']}")
    return out


# ------------------------------------------------------------------ ablation
# (name, extra CLI arguments, extra environment, effnet_cli.inference constants to patch)
E2E_ABLATION: list[tuple[str, list[str], dict[str, str], dict[str, Any]]] = [
    ("defaults: --backend torch, 2 decode workers at normal priority, threads = cores waiting passively, "
     "draft decoding to 1.5× the resize target", [], {}, {}),
    ("--backend auto", ["--backend", "auto"], {}, {}),
    ("--backend torch, OMP_WAIT_POLICY=ACTIVE (spinning OpenMP threads; the old default)", ["--backend", "torch"],
     {"OMP_WAIT_POLICY": "ACTIVE"}, {}),
    ("decode workers at nice 19 (the old default; starves under load)", [], {}, {"WORKER_NICE": 19}),
    ("--workers 0 (decode in the main process: no overlap)", ["--workers", "0"], {}, {}),
    ("--workers 1", ["--workers", "1"], {}, {}),
    ("GOMP_SPINCOUNT=10000 (idle OpenMP threads sleep sooner; not kept)", [], {"GOMP_SPINCOUNT": "10000"}, {}),
    ("--exact-decode (no JPEG draft mode)", ["--exact-decode"], {}, {}),
    ("draft decoding to 2× the resize target (more conservative)", [], {}, {"DRAFT_MARGIN": 2}),
    ("draft decoding down to the resize target itself (not kept: flips a sample photo's top-1)", [], {},
     {"DRAFT_MARGIN": 1}),
    ("--dtype bfloat16 (opt-in)", ["--dtype", "bfloat16"], {}, {}),
]


def _cli_patched(constants: dict[str, int]) -> list[str]:
    """The real CLI entry point with module constants of effnet_cli.inference changed (they have no option)."""
    sets = "; ".join(f"inference.{name} = {value!r}" for name, value in constants.items())
    # The CLI's thread policy first: it must be in the environment before torch loads.
    code = (f"import sys; from effnet_cli.cli.app import _thread_waiting_policy; _thread_waiting_policy(); "
            f"import effnet_cli.inference as inference; {sets}; "
            "from effnet_cli.cli.app import main; sys.argv[0] = 'effnet'; main()")
    return [PY, "-c", code]


def run_under_load(quick: bool) -> list[dict[str, Any]]:
    """Model forward (b0, batch 16) in each runtime while another program keeps one core busy."""
    if not SHARED:
        wait_for_quiet()
    hog = subprocess.Popen([PY, "-c", "while True: pass"])
    rows = []
    try:
        time.sleep(1)
        passive = {"OMP_WAIT_POLICY": "PASSIVE"}  # what the CLI sets before torch loads
        for name, lib, env_extra in (
                ("optimize(), torch's defaults (OpenMP threads spin)", "effnet-engine", {}),
                ("optimize(), GOMP_SPINCOUNT=10000", "effnet-engine", {"GOMP_SPINCOUNT": "10000"}),
                ("optimize(), OMP_WAIT_POLICY=PASSIVE (the CLI's setting)", "effnet-engine", passive),
                ("optimize(), OMP_NUM_THREADS=1", "effnet-engine", {"OMP_NUM_THREADS": "1"}),
                ("effnet Engine, --backend auto", "effnet-auto", passive),
                ("ONNX Runtime used directly", "onnxruntime", {}),
                ("OpenVINO used directly", "openvino", {})):
            cmd = [PY, str(HERE / "contenders.py"), "forward", "--lib", lib, "--variant", "b0",
                   "--batch", "16", "--warmup", "1", "--iters", "3" if quick else "6"]
            run = run_child(cmd, env=dict(os.environ, **env_extra))
            rate = json.loads(run.lines[-1])["images_per_s"] if run.returncode == 0 and run.lines else float("nan")
            rows.append({"name": name, "images_per_s": rate})
            log(f"under load, {name}: {rate:.1f} img/s")
    finally:
        hog.kill()
        hog.wait()
    return rows


def run_ablation(quick: bool, compile: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"forward": [], "e2e": []}
    rounds = "3" if quick else "8"
    for keep in (False, True):
        cmd = [PY, str(HERE / "ablation.py"), "--variant", "b0", "--batch", "16", "--rounds", rounds]
        if keep:
            cmd.append("--keep-freed-memory")
        if compile and keep:
            cmd.append("--compile")
        run = quietly(f"ablation forward keep_freed_memory={keep}", lambda cmd=cmd: run_child(cmd))
        for line in run.lines:
            if line.startswith("{"):
                out["forward"].append(json.loads(line))
        log(f"ablation forward keep_freed_memory={keep}: rc={run.returncode} {run.stderr[-300:] if run.returncode else ''}")
    out["under_load"] = run_under_load(quick)
    paths = [str(p) for p in prepare.camera_passes(256, 2 if quick else PASSES)]
    repeats = 1 if quick else 2
    results: dict[str, list[float]] = {}
    for rep in range(repeats):
        for name, extra, env_extra, constants in E2E_ABLATION:
            env = dict(os.environ, **env_extra)
            cmd = effnet_cmd(prepare.effnet_dir("b0"), ["-"], extra=extra)
            if constants:
                cmd = _cli_patched(constants) + cmd[cmd.index("classify"):]
            run = quietly(f"ablation e2e {name}", lambda cmd=cmd, env=env: run_child(
                cmd, env=env, stdin_text="\n".join(paths) + "\n"))
            rate = middle_rate(run, len(paths))
            results.setdefault(name, []).append(rate)
            log(f"ablation e2e {name}: {rate:.1f} img/s (load {load_average()})")
    for name, rates in results.items():
        out["e2e"].append({"name": name, "images_per_s": statistics.median(rates), "runs": rates})
    return out


# ------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (e.g. docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers as JSON")
    parser.add_argument("--only", default="forward,e2e,draft,cli,ablation", help="comma-separated sections to run")
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts, to check the script runs")
    parser.add_argument("--compile", action="store_true", help="also time optimize(compile=True) in the ablation")
    parser.add_argument("--shared", action="store_true",
                        help="the machine is shared: measure at once instead of waiting for idle CPUs and "
                             "repeating disturbed measurements (indicative figures only)")
    args = parser.parse_args()
    global SHARED, TRIES
    if args.shared:
        SHARED, TRIES = True, 1
    sections = set(args.only.split(","))

    from report import render  # noqa: PLC0415 - local module

    started = time.time()
    results: dict[str, Any] = {"load_start": load_average(), "started": time.strftime("%Y-%m-%d %H:%M"),
                               "quick": args.quick, "shared": args.shared, "command": "python benchmarks/run.py " + " ".join(sys.argv[1:])}
    log(f"load average at start: {results['load_start']}")
    log("preparing weights and images")
    # In a child process: this process must stay small, because a child's memory high-water mark
    # starts from its parent's size at fork.
    prep = subprocess.run([PY, str(HERE / "prepare.py")], capture_output=True, text=True)
    if prep.returncode != 0:
        raise SystemExit(f"preparing failed:\n{prep.stderr[-2000:]}")
    results.update(json.loads(prep.stdout.strip().splitlines()[-1]))
    log(f"weights agree across libraries: {results['mapping']}")
    if "forward" in sections:
        results["forward"] = run_forward(args.quick)
    if "e2e" in sections:
        results["e2e"] = run_e2e(args.quick)
        results["sustained"] = run_sustained(args.quick)
    if "draft" in sections:
        results["draft"] = run_draft(args.quick)
    if "cli" in sections:
        results["cli"] = run_cli(args.quick)
    if "ablation" in sections:
        results["ablation"] = run_ablation(args.quick, args.compile)
    results["load_end"] = load_average()
    results["disturbance"] = {"max_foreign_share": max(DISTURBANCE, default=0.0), "measurements": len(DISTURBANCE),
                              "limit": MAX_FOREIGN, "tries": TRIES}
    results["minutes"] = (time.time() - started) / 60
    text = render(results)
    if args.out:
        args.out.write_text(text)
        log(f"wrote {args.out}")
    else:
        print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
