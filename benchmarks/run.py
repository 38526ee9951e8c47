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
Each section's measurement is in its own module (run_forward.py, run_e2e.py,
run_load.py, run_ablation.py; what they share in run_common.py), and the page is
rendered by report.py (``python benchmarks/report.py results.json`` renders it
again from the JSON).
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
from run_ablation import run_ablation  # noqa: E402
from run_common import (  # noqa: E402
    POLICY, PY, contender_json, effnet_cmd, load_average, log, quietly, run_child,
)
from run_e2e import import_torch_rss_mb, run_e2e, run_sustained  # noqa: E402
from run_forward import prewarm_auto, run_forward  # noqa: E402
from run_load import run_loaded  # noqa: E402

SECTIONS = "forward,e2e,load,draft,bf16,cli,ablation"


def run_draft(quick: bool) -> dict[str, Any] | None:
    """Fast-decode options (decoder, margin, cropped resize): time per image and top-1 flips (bundled Lite0)."""
    listing = prepare.OUT / "draft.txt"
    listing.write_text("\n".join(str(p) for p in prepare.camera_jpegs(256)[: 32 if quick else 256]) + "\n")
    return contender_json(["draft", "--list", str(listing), "--rounds", "2" if quick else "5"])


def run_bf16(quick: bool) -> dict[str, Any] | None:
    """Top-1 agreement of every backend/dtype with PyTorch float32 (benchmarks/bf16_agreement.py, bundled Lite0)."""
    run = quietly("bf16 agreement", lambda: run_child([PY, str(HERE / "bf16_agreement.py"), "--json"]))
    if run.returncode != 0:
        log(f"bf16 agreement failed: {run.stderr[-500:]}")
        return None
    return json.loads("\n".join(run.lines))


# ------------------------------------------------------------------ CLI
def run_cli(quick: bool) -> dict[str, Any]:
    """`effnet --help`'s time, and the peak memory of `effnet classify` over many small files."""
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: where to write, which sections, how long."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (e.g. docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers as JSON")
    parser.add_argument("--only", default=SECTIONS, help="comma-separated sections to run")
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts, to check the script runs")
    parser.add_argument("--compile", action="store_true", help="also time optimize(compile=True) in the ablation")
    parser.add_argument("--shared", action="store_true",
                        help="the machine is shared: measure at once instead of waiting for idle CPUs and "
                             "repeating disturbed measurements (indicative figures only)")
    return parser.parse_args(argv)


def prepare_run(results: dict[str, Any]) -> None:
    """Weights and images for every contender, and the machine's description, into ``results``."""
    log("preparing weights and images")
    # In a child process: this process must stay small, because a child's memory high-water mark
    # starts from its parent's size at fork.
    prep = subprocess.run([PY, str(HERE / "prepare.py")], capture_output=True, text=True)
    if prep.returncode != 0:
        raise SystemExit(f"preparing failed:\n{prep.stderr[-2000:]}")
    results.update(json.loads(prep.stdout.strip().splitlines()[-1]))
    log(f"weights agree across libraries: {results['mapping']}")


def measure(sections: set[str], args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Run the chosen sections in order, each into its keys of ``results``."""
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


def main() -> None:
    args = parse_args()
    if args.shared:
        POLICY.shared, POLICY.tries = True, 1
    sections = set(args.only.split(","))

    from report import render  # noqa: PLC0415 - local module

    started = time.time()
    cache = use_own_cache()
    results: dict[str, Any] = {"load_start": load_average(), "started": time.strftime("%Y-%m-%d %H:%M"),
                               "quick": args.quick, "shared": args.shared, "command": "python benchmarks/run.py " + " ".join(sys.argv[1:])}
    log(f"load average at start: {results['load_start']}; EFFNET_CACHE={cache}")
    prepare_run(results)
    results["auto"] = prewarm_auto(sections, args.quick)
    measure(sections, args, results)
    results["load_end"] = load_average()
    results["disturbance"] = POLICY.summary()
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
