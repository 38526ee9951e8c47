"""Section ``e2e`` of benchmarks/run.py: JPEG files to top-5, every contender a process timed as its records arrive.

Also the steady-state pairs (`effnet classify` against effnet's own forward and decode
pipeline, measured back to back) and the memory floor of a process that only imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import prepare
from run_common import (
    CLI_BACKENDS, HERE, PASSES, PY, ChildRun, backend_args, contender_json, effnet_cmd, load_average, log,
    middle_rate, per_round_ratios, quietly, ratio, run_child, steady_rate,
)

E2E_LIBS = ("effnet", "effnet-torch", "onnxruntime", "openvino", "transformers", "timm", "torchvision")
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
            r = ratio(name, per_round_ratios(by_round, num, den), variant=variant, images=len(paths))
            ratios.append(r)
            log(f"e2e {variant}: {name} = {r['median']} (rounds {r['per_round']})")
    return rows, ratios


def _e2e_once(lib: str, variant: str, paths: list[str], listing: Path, batch: int) -> dict[str, Any]:
    """One end-to-end run of one contender."""
    if lib in CLI_BACKENDS:
        # Paths on stdin: the CLI reads the same list in the same order as the others.
        cmd = effnet_cmd(prepare.effnet_dir(variant), ["-"], batch=batch, extra=backend_args(lib))
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
        fwd = contender_json(["forward", "--lib", "effnet-auto", "--variant", "b0", "--batch", "16",
                              "--warmup", "3", "--iters", "20"])
        dec = contender_json(["decode", "--variant", "b0", "--list", str(listing)])
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
    fwd = contender_json(["forward", "--lib", "effnet-auto", "--variant", "b7", "--batch", "16",
                          "--warmup", "1", "--iters", "1"])
    run = quietly("sustained classify b7", lambda: run_child(effnet_cmd(prepare.effnet_dir("b7"), ["-"]),
                                                            stdin_text="\n".join(b7_paths) + "\n"))
    out["b7"] = {"images": len(b7_paths), "forward": fwd["images_per_s"] if fwd else None,
                 "classify": run.steady_rate(16) if run.returncode == 0 else float("nan")}
    log(f"sustained b7: {out['b7']}")
    return out


def import_torch_rss_mb() -> float | None:
    """Resident-set high-water mark (MB) of a Python process that only imports torch: the floor under the CLI."""
    code = ("import torch, pathlib; print(next(int(l.split()[1]) for l in "
            "pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')) / 1024)")
    run = run_child([PY, "-c", code])
    return float(run.lines[-1]) if run.returncode == 0 and run.lines else None

