"""The side-by-side benchmark: effnet against torchvision, timm and transformers, in one run on one machine.

    python benchmarks/run.py --compile --out docs/benchmarks.md --json benchmarks/out/results.json

needs the test extras (transformers, timm) besides effnet itself, downloads
nothing, and takes about 40 minutes on 2 cores. It

1. writes one set of seeded weights for b0 and b7 in every library's layout
   and checks that they compute the same where the architectures coincide
   (benchmarks/prepare.py), and lets ``--backend auto`` (the default backend)
   measure and remember its choice in this run's ``$EFFNET_CACHE``
   (benchmarks/out/effnet-cache), so that no timed process includes it;
2. times the model forward alone (b0 at 224 px, b7 at 600 px; batch 1 and 16)
   for each library, each in its own process so memory peaks do not mix; the
   default backend, ``--backend torch`` and ONNX Runtime / OpenVINO used
   directly (float32 and bfloat16) in several interleaved rounds, compared as
   medians of per-round ratios;
3. times end to end (camera-sized JPEGs -> top-5, batch 16): the real
   ``effnet classify`` CLI with its default and with each ``--backend``, the
   runtimes used directly, transformers' ``pipeline("image-classification")``
   (with ``num_workers``), timm's and torchvision's own preprocessing with a
   DataLoader; b0 in steady state over 1,024 paths, in interleaved rounds;
   then ``effnet classify`` against effnet's own forward and decode pipeline;
4. measures ``effnet classify`` in steady state with one and with two busy
   processes pinned to the cores (section ``load``);
5. checks how often draft (reduced-size) JPEG decoding changes a top-1, with
   the bundled Lite0's real weights;
6. measures ``effnet --help`` and the peak memory of ``effnet classify`` over
   1,000 and 10,000 files;
7. measures what each optimisation is worth (benchmarks/ablation.py, and the
   CLI's decode/threads settings);

and writes everything as markdown to ``--out`` (and JSON beside it with --json).
Sections can be chosen with --only (forward,e2e,load,draft,bf16,cli,ablation).
"""

from __future__ import annotations

import argparse
import json
import math
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
# Measured in every round, so that their ratios can be taken within a round (the others only in the first):
# effnet's default backend (auto), `--backend torch` (optimize()) and the runtimes used directly.
RATIO_LIBS = ("effnet-engine", "effnet-auto", "onnxruntime", "openvino", "effnet-engine-bf16", "effnet-auto-bf16",
              "openvino-bf16")


def forward_plan(quick: bool) -> list[tuple[str, int, int, int, int]]:
    """(variant, batch, warmup, iterations, rounds) per measurement."""
    if quick:
        return [("b0", 16, 1, 3, 2), ("b0", 1, 2, 5, 2)]
    return [("b0", 16, 2, 10, 4), ("b0", 1, 5, 20, 4), ("b7", 1, 1, 3, 1), ("b7", 16, 1, 1, 1)]


def _per_round(by_round: dict[str, list[float]], num: str, den: tuple[str, ...]) -> list[float]:
    """``num`` ÷ the best of ``den`` within each round where all were measured."""
    out = []
    for i, a in enumerate(by_round.get(num, [])):
        b = [by_round[d][i] for d in den if i < len(by_round.get(d, []))]
        if len(b) == len(den) and not any(map(math.isnan, [a, *b])) and max(b) > 0:
            out.append(a / max(b))
    return out


def ratio(name: str, per_round: list[float], **extra: Any) -> dict[str, Any]:
    return {"name": name, "per_round": per_round, "median": statistics.median(per_round) if per_round else None,
            **extra}


def run_forward(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Forward rows, and the ratios of effnet's default backend to the others, as medians of per-round ratios."""
    rows, ratios = [], []
    for variant, batch, warmup, iters, rounds in forward_plan(quick):
        results: dict[str, list[dict[str, Any]]] = {lib: [] for lib in FORWARD_LIBS}
        by_round: dict[str, list[float]] = {lib: [] for lib in RATIO_LIBS}
        for rep in range(rounds):
            # Rotate the order each round, so drift in the machine's load does not favour one library.
            libs = FORWARD_LIBS if rep == 0 else RATIO_LIBS
            order = libs[rep % len(libs):] + libs[:rep % len(libs)]
            for lib in order:
                cmd = [PY, str(HERE / "contenders.py"), "forward", "--lib", lib, "--variant", variant,
                       "--batch", str(batch), "--warmup", str(warmup), "--iters", str(iters)]
                run = quietly(f"forward {variant} batch {batch} {lib}", lambda cmd=cmd: run_child(cmd))
                if run.returncode != 0 or not run.lines:
                    log(f"forward {lib} {variant} b{batch} failed: {run.stderr[-500:]}")
                    if lib in by_round:
                        by_round[lib].append(float("nan"))
                    continue
                data = json.loads(run.lines[-1])
                data["foreign_share"] = run.foreign_share
                results[lib].append(data)
                if lib in by_round:
                    by_round[lib].append(data["images_per_s"])
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
        if variant == "b0":
            for name, num, den in (("default ÷ best(ONNX Runtime, OpenVINO)", "effnet-auto", ("onnxruntime", "openvino")),
                                   ("default ÷ --backend torch", "effnet-auto", ("effnet-engine",)),
                                   ("default bf16 ÷ OpenVINO bf16", "effnet-auto-bf16", ("openvino-bf16",))):
                r = ratio(name, _per_round(by_round, num, den), variant=variant, batch=batch)
                ratios.append(r)
                log(f"forward {variant} batch {batch}: {name} = {r['median']} (rounds {r['per_round']})")
    return rows, ratios


# ------------------------------------------------------------------ end to end
# The real CLI with each backend (the keys after "effnet" are `--backend` values); the rest are contenders.py.
CLI_BACKENDS = {"effnet": None, "effnet-torch": "torch", "effnet-onnxruntime": "onnxruntime",
                "effnet-openvino": "openvino"}
E2E_B0_LIBS = ("effnet", "effnet-torch", "effnet-onnxruntime", "effnet-openvino", "onnxruntime", "openvino",
               "transformers", "timm", "torchvision")
# b0: measured in the first round only, over the first 512 paths (no target depends on them; in steady state
# they run at ~10 images/s here, and the whole benchmark must stay within about 40 minutes).
E2E_ONCE = ("timm", "torchvision")
E2E_ONCE_PATHS = 512


def e2e_plan(quick: bool) -> list[tuple[str, list[str], int, tuple[str, ...]]]:
    """(variant, paths, rounds, contenders).

    b0 runs in steady state: 1,024 paths (the 256 camera JPEGs hard-linked 4 times, so each is decoded)
    and the rate over the middle half of the records, when decoding and the model run side by side.
    """
    b0 = [str(p) for p in prepare.camera_passes(256, 2 if quick else PASSES)]
    plan = [("b0", b0, 1 if quick else 3, E2E_B0_LIBS)]
    if not quick:
        plan.append(("b7", [str(p) for p in prepare.camera_jpegs(256)[:32]], 1, E2E_LIBS))
    return plan


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
    if lib not in CLI_BACKENDS:  # the script reports its own high-water mark on stderr
        for line in run.stderr.splitlines():
            if line.startswith("{") and "peak_rss_mb" in line:
                peak = json.loads(line)["peak_rss_mb"]
    # Long runs: the middle half (steady state); short ones (b7): the second half.
    rate = middle_rate(run, count) if count >= 256 else steady_rate(run, count)
    return {"variant": variant, "lib": lib, "images": count, "batch": batch, "ok": run.returncode == 0
            and len(run.lines) == count, "steady_images_per_s": rate, "middle_half": count >= 256,
            "overall_images_per_s": run.overall_rate(), "wall_s": run.wall_s, "first_batch_s": run.times[batch - 1]
            if len(run.times) >= batch else None, "peak_rss_mb": peak, "peak_tree_pss_mb": run.peak_tree_pss_mb,
            "stderr_tail": run.stderr[-300:] if run.returncode else "", "foreign_share": run.foreign_share}


def run_e2e(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """End-to-end rows (per contender: the median round) and the ratios of `effnet classify` as medians of rounds."""
    rows, ratios = [], []
    batch = 16
    for variant, paths, rounds, libs in e2e_plan(quick):
        listing = prepare.OUT / f"e2e-{variant}-{len(paths)}.txt"
        listing.write_text("\n".join(paths) + "\n")
        runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libs}
        for rep in range(rounds):
            every = tuple(lib for lib in libs if rep == 0 or lib not in E2E_ONCE)
            # Rotated order, as for the forward rows: drift in the machine's speed favours no one.
            for lib in every[rep % len(every):] + every[:rep % len(every)]:
                if variant == "b0" and lib in E2E_ONCE and len(paths) > E2E_ONCE_PATHS:
                    short = prepare.OUT / f"e2e-{variant}-{E2E_ONCE_PATHS}.txt"
                    short.write_text("\n".join(paths[:E2E_ONCE_PATHS]) + "\n")
                    runs[lib].append(_e2e_once(lib, variant, paths[:E2E_ONCE_PATHS], short, batch))
                    continue
                runs[lib].append(_e2e_once(lib, variant, paths, listing, batch))
        by_round = {lib: [r["steady_images_per_s"] for r in rs] for lib, rs in runs.items()}
        for lib, rows_of_lib in runs.items():
            row = dict(sorted(rows_of_lib, key=lambda r: r["steady_images_per_s"])[len(rows_of_lib) // 2])
            row["runs"] = by_round[lib]
            row["ok"] = all(r["ok"] for r in rows_of_lib)
            row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows_of_lib)
            row["peak_tree_pss_mb"] = max(r["peak_tree_pss_mb"] for r in rows_of_lib)
            rows.append(row)
        for name, num, den in (("default ÷ --backend torch", "effnet", ("effnet-torch",)),
                               ("default ÷ transformers pipeline", "effnet", ("transformers",)),
                               ("default ÷ best(ONNX Runtime, OpenVINO) used directly", "effnet",
                                ("onnxruntime", "openvino"))):
            r = ratio(name, _per_round(by_round, num, den), variant=variant, images=len(paths))
            ratios.append(r)
            log(f"e2e {variant}: {name} = {r['median']} (rounds {r['per_round']})")
    return rows, ratios


def _e2e_once(lib: str, variant: str, paths: list[str], listing: Path, batch: int) -> dict[str, Any]:
    """One end-to-end run of one contender."""
    if lib in CLI_BACKENDS:
        # Paths on stdin: the CLI reads the same list in the same order as the others.
        backend = CLI_BACKENDS[lib]
        cmd = effnet_cmd(prepare.effnet_dir(variant), ["-"], batch=batch,
                         extra=["--backend", backend] if backend else None)
        stdin = "\n".join(paths) + "\n"
    else:
        cmd = [PY, str(HERE / "contenders.py"), "e2e", "--lib", lib, "--variant", variant,
               "--batch", str(batch), "--workers", "2", "--list", str(listing)]
        stdin = None
    run = quietly(f"e2e {variant} {lib}", lambda: run_child(cmd, stdin_text=stdin))
    row = _e2e_row(run, lib=lib, variant=variant, count=len(paths), batch=batch)
    log(f"e2e {variant} {lib}: {row['steady_images_per_s']:.1f} img/s steady, "
        f"{row['wall_s']:.1f} s wall, {row['peak_rss_mb']:.0f} MB, ok={row['ok']} (load {load_average()}) "
        f"{row['stderr_tail']}")
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
        # The forward of effnet's default backend (auto, at batch 16), which the CLI runs.
        fwd = _contender_json(["forward", "--lib", "effnet-auto", "--variant", "b0", "--batch", "16",
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
    if quick:  # b7 would have `auto` export and measure b7 inside the timed run: minutes
        return out
    # b7: decoding is a rounding error next to the model; one pair, 64 images (4 batches).
    b7_paths = [str(p) for p in prepare.camera_passes(32, 2)][:64]
    fwd = _contender_json(["forward", "--lib", "effnet-auto", "--variant", "b7", "--batch", "16",
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


def run_bf16(quick: bool) -> dict[str, Any] | None:
    """Top-1 agreement of every backend/dtype with PyTorch float32 (benchmarks/bf16_agreement.py, bundled Lite0)."""
    run = quietly("bf16 agreement", lambda: run_child([PY, str(HERE / "bf16_agreement.py"), "--json"]))
    if run.returncode != 0:
        log(f"bf16 agreement failed: {run.stderr[-500:]}")
        return None
    return json.loads("\n".join(run.lines))


# ------------------------------------------------------------------ under load
LOADS = (("nothing else running", ()), ("one busy process pinned to core 0", (0,)),
         ("one busy process pinned to each core", (0, 1)))


def _hogs(cores_taken: tuple[int, ...]) -> list[subprocess.Popen]:
    """A CPU-bound Python loop at normal priority pinned to each of ``cores_taken`` (indices into our cores)."""
    mine = sorted(os.sched_getaffinity(0))
    code = "import os; os.sched_setaffinity(0, {{{}}})\nwhile True: pass"
    return [subprocess.Popen([PY, "-c", code.format(mine[i % len(mine)])]) for i in cores_taken]


def loaded_rate(run: ChildRun, count: int, timeout: float) -> float:
    """Steady-state images/s; for a run stopped at ``timeout``, what it managed (0 when nothing came out)."""
    if run.returncode == 0 and len(run.times) >= count:
        return middle_rate(run, count)
    if len(run.times) > 2 * 16:  # past start-up: the rate after the first two batches
        return (len(run.times) - 32) / (run.times[-1] - run.times[31])
    return len(run.times) / timeout


def run_loaded(quick: bool) -> dict[str, Any]:
    """`effnet classify` in steady state with nothing, one and two busy processes pinned to the cores.

    Each round measures the default and `--backend torch` under every load, so each share is taken
    against the unloaded rate of the same round.
    """
    paths = [str(p) for p in prepare.camera_passes(256, 2 if quick else PASSES)]
    stdin = "\n".join(paths) + "\n"
    timeout = 120.0 if quick else 240.0
    libs = ("effnet", "effnet-torch")
    rates: dict[tuple[str, str], list[float]] = {}
    for rep in range(1 if quick else 2):
        for load, cores_taken in LOADS:
            if not SHARED:
                wait_for_quiet()
            hogs = _hogs(cores_taken)
            try:
                time.sleep(0.5)
                for lib in libs[rep % 2:] + libs[:rep % 2]:
                    backend = CLI_BACKENDS[lib]
                    cmd = effnet_cmd(prepare.effnet_dir("b0"), ["-"], extra=["--backend", backend] if backend else None)
                    run = run_child(cmd, stdin_text=stdin, timeout=timeout)
                    rate = loaded_rate(run, len(paths), timeout)
                    rates.setdefault((lib, load), []).append(rate)
                    log(f"under load ({load}) {lib}: {rate:.1f} img/s, {len(run.lines)} of {len(paths)} records "
                        f"in {run.wall_s:.0f} s")
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    rows = []
    for lib in libs:
        base = rates.get((lib, LOADS[0][0]), [])
        for load, cores_taken in LOADS:
            got = rates.get((lib, load), [])
            shares = [a / b for a, b in zip(got, base) if b and not math.isnan(a) and not math.isnan(b)]
            rows.append({"lib": lib, "load": load, "busy": len(cores_taken), "runs": got,
                         "images_per_s": statistics.median(got) if got else None,
                         "share_per_round": shares, "share": statistics.median(shares) if shares else None})
    return {"images": len(paths), "timeout_s": timeout, "rows": rows}


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
    # The first run of 1,000+ files with the default backend measures the backends once (exports, a probe
    # in each runtime); done here, untimed, so both measured runs are ordinary runs that reuse the choice.
    run_child(effnet_cmd(weights, [str(prepare.tiny_jpegs(1000))], batch=64))
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
# (name, extra CLI arguments, extra environment, effnet_cli.runtime.engine constants to patch)
E2E_ABLATION: list[tuple[str, list[str], dict[str, str], dict[str, Any]]] = [
    ("defaults: --backend auto, 2 decode workers at normal priority, threads = cores waiting passively, "
     "draft decoding to 1.5× the resize target", [], {}, {}),
    ("--backend torch", ["--backend", "torch"], {}, {}),
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
    """The real CLI entry point with module constants of effnet_cli.runtime.engine changed (they have no option)."""
    sets = "; ".join(f"inference.{name} = {value!r}" for name, value in constants.items())
    # The CLI's thread policy first: it must be in the environment before torch loads.
    code = (f"import sys; from effnet_cli.cli.app import _thread_waiting_policy; _thread_waiting_policy(); "
            f"import effnet_cli.runtime.engine as inference; {sets}; "
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
            if lib == "effnet-engine":  # the environment of each row decides, not the CLI's policy
                cmd += ["--thread-policy", "torch"]
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
    repeats = 1  # one pass over the settings: the whole benchmark must stay within about 40 minutes
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


def import_torch_rss_mb() -> float | None:
    """Resident-set high-water mark (MB) of a Python process that only imports torch: the floor under the CLI."""
    code = ("import torch, pathlib; print(next(int(l.split()[1]) for l in "
            "pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')) / 1024)")
    run = run_child([PY, "-c", code])
    return float(run.lines[-1]) if run.returncode == 0 and run.lines else None


# ------------------------------------------------------------------ main
def use_own_cache() -> Path:
    """Point effnet's cache (exports, `auto`'s remembered choices) at benchmarks/out for this run and its children.

    `auto`'s choices are forgotten first, so they are measured in this run, on this machine as it is now.
    """
    cache = prepare.OUT / "effnet-cache"
    os.environ["EFFNET_CACHE"] = str(cache)
    # The default backend is what is measured: not one chosen in the environment.
    os.environ.pop("EFFNET_BACKEND", None)
    shutil.rmtree(cache / "exports" / "auto", ignore_errors=True)
    return cache


def prewarm_auto(sections: set[str], quick: bool) -> dict[str, Any]:
    """Let `--backend auto` export, measure and remember its choice for every model, batch size and dtype timed
    later, so that no timed process includes that one-time work."""
    # b0: cheap (seconds), and every section runs it. b7 only for the CLI runs of the e2e section (each
    # forward contender's own set-up is not timed); at 600 px this takes minutes.
    plans = [("b0", ["1", "16"], ["float32", "bfloat16"])]
    if "e2e" in sections and not quick:
        plans.append(("b7", ["16"], ["float32"]))
    out: dict[str, Any] = {}
    for variant, batches, dtypes in plans:
        data = _contender_json(["prewarm", "--variant", variant, "--batches", *batches, "--dtypes", *dtypes])
        if data:
            out[variant] = data["choices"]
            log(f"auto's choices for {variant}: {data['choices']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (e.g. docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers as JSON")
    parser.add_argument("--only", default="forward,e2e,load,draft,bf16,cli,ablation",
                        help="comma-separated sections to run")
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
    cache = use_own_cache()
    results: dict[str, Any] = {"load_start": load_average(), "started": time.strftime("%Y-%m-%d %H:%M"),
                               "quick": args.quick, "shared": args.shared, "command": "python benchmarks/run.py " + " ".join(sys.argv[1:])}
    log(f"load average at start: {results['load_start']}; EFFNET_CACHE={cache}")
    log("preparing weights and images")
    # In a child process: this process must stay small, because a child's memory high-water mark
    # starts from its parent's size at fork.
    prep = subprocess.run([PY, str(HERE / "prepare.py")], capture_output=True, text=True)
    if prep.returncode != 0:
        raise SystemExit(f"preparing failed:\n{prep.stderr[-2000:]}")
    results.update(json.loads(prep.stdout.strip().splitlines()[-1]))
    log(f"weights agree across libraries: {results['mapping']}")
    results["auto"] = prewarm_auto(sections, args.quick)
    if "forward" in sections:
        results["forward"], results["forward_ratios"] = run_forward(args.quick)
    if "e2e" in sections:
        results["e2e"], results["e2e_ratios"] = run_e2e(args.quick)
        results["import_torch_rss_mb"] = import_torch_rss_mb()
        results["sustained"] = run_sustained(args.quick)
    if "load" in sections:
        results["loaded"] = run_loaded(args.quick)
    if "draft" in sections:
        results["draft"] = run_draft(args.quick)
    if "bf16" in sections:
        results["bf16"] = run_bf16(args.quick)
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
