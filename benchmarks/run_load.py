"""Section ``load`` of benchmarks/run.py: effnet with busy processes pinned to the cores.

`effnet classify` in steady state with nothing, one and two CPU-bound loops running
(:func:`run_loaded`), and the model forward of each runtime while one core is taken
(:func:`run_under_load`, a table of the ablation section).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import time
from typing import Any

import prepare
from run_common import HERE, PASSES, POLICY, PY, ChildRun, backend_args, effnet_cmd, log, middle_rate, run_child

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
            POLICY.wait()
            hogs = _hogs(cores_taken)
            try:
                time.sleep(0.5)
                for lib in libs[rep % 2:] + libs[:rep % 2]:
                    cmd = effnet_cmd(prepare.effnet_dir("b0"), ["-"], extra=backend_args(lib))
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


def run_under_load(quick: bool) -> list[dict[str, Any]]:
    """Model forward (b0, batch 16) in each runtime while another program keeps one core busy."""
    POLICY.wait()
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
