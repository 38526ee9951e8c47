"""Section ``ablation`` of benchmarks/run.py: what each optimisation is worth.

The model forward step by step (benchmarks/ablation.py, with and without the allocator
setting), the forward of each runtime under load, and `effnet classify` end to end with
each setting of the CLI changed in turn.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

import prepare
from run_common import HERE, PASSES, PY, effnet_cmd, load_average, log, middle_rate, quietly, run_child
from run_load import run_under_load

# (name, extra CLI arguments, extra environment, module constants to patch: CONSTANT_HOMES)
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


# The module that reads each patchable constant at run time.
CONSTANT_HOMES = {"DRAFT_MARGIN": "effnet_cli.data.decode", "WORKER_NICE": "effnet_cli.runtime.engine"}


def _cli_patched(constants: dict[str, int]) -> list[str]:
    """The real CLI entry point with module constants changed (they have no option)."""
    sets = "".join(f"import {CONSTANT_HOMES[name]} as m; m.{name} = {value!r}; " for name, value in constants.items())
    # The CLI's thread policy first: it must be in the environment before torch loads.
    code = ("import sys; from effnet_cli.cli.app import _thread_waiting_policy; _thread_waiting_policy(sys.argv[1:]); "
            f"{sets}from effnet_cli.cli.app import main; sys.argv[0] = 'effnet'; main()")
    return [PY, "-c", code]


def run_ablation(quick: bool, compile: bool) -> dict[str, Any]:
    """The forward step by step (with and without the allocator setting), under load, and end to end."""
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
