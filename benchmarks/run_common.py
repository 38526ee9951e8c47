"""What every section of benchmarks/run.py shares: measuring on a shared machine, child commands, rates, ratios.

A measurement waits for idle CPUs and is repeated when other programs used the CPUs while
it ran (:func:`quietly`, following :data:`POLICY`); a contender runs as a child process
(:func:`effnet_cmd` for the real CLI, :func:`contender_json` for benchmarks/contenders.py);
its rate comes from the times its records arrived (:func:`middle_rate`, :func:`steady_rate`);
and two contenders are compared by the median of their ratios within each round (:func:`ratio`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import ChildRun, run_child, wait_for_quiet  # noqa: E402

PY = sys.executable
# The real CLI with each backend (the keys after "effnet" are `--backend` values); the rest are contenders.py.
CLI_BACKENDS = {"effnet": None, "effnet-torch": "torch", "effnet-onnxruntime": "onnxruntime",
                "effnet-openvino": "openvino"}
PASSES = 4  # the 256 camera JPEGs, linked 4 times: 1,024 paths, 64 batches


@dataclass
class Policy:
    """How measurements deal with other programs: the machine this runs on may be shared."""

    # A measurement is repeated (up to ``tries`` times) when other programs used more than this share of
    # the CPUs while it ran.
    max_foreign: float = 0.05
    tries: int = 3
    # --shared: measure at once, never wait or repeat (indicative figures on a busy machine).
    shared: bool = False
    # The foreign share of every kept measurement, for the report.
    disturbance: list[float] = field(default_factory=list)

    def wait(self) -> None:
        """Wait for idle CPUs, unless the machine is known to be shared."""
        if not self.shared:
            wait_for_quiet()

    def summary(self) -> dict[str, Any]:
        """The report's account of how disturbed the kept measurements were."""
        return {"max_foreign_share": max(self.disturbance, default=0.0), "measurements": len(self.disturbance),
                "limit": self.max_foreign, "tries": self.tries}


POLICY = Policy()


def quietly(label: str, make: Any) -> ChildRun:
    """``make()`` once the machine is idle, again if something else ran meanwhile; the least disturbed run."""
    best = None
    for attempt in range(1, POLICY.tries + 1):
        POLICY.wait()
        run = make()
        run.extra["attempts"] = attempt
        if best is None or run.foreign_share < best.foreign_share:
            best = run
        if run.foreign_share <= POLICY.max_foreign or attempt == POLICY.tries:
            break
        log(f"{label}: other programs used {run.foreign_share:.0%} of the CPUs meanwhile; measuring again")
    POLICY.disturbance.append(best.foreign_share)
    return best


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def per_round_ratios(by_round: dict[str, list[float]], num: str, den: tuple[str, ...]) -> list[float]:
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


def effnet_cmd(variant_dir: Path, inputs: list[str], *, batch: int = 16, extra: list[str] | None = None) -> list[str]:
    exe = shutil.which("effnet")
    base = [exe] if exe else [PY, "-m", "effnet_cli"]
    return base + ["classify", *inputs, "--model", str(variant_dir), "--format", "jsonl", "--top-k", "5",
                   "--batch-size", str(batch), "--quiet", *(extra or [])]


def backend_args(lib: str) -> list[str] | None:
    """The `--backend` option of one of the CLI's rows (none for the default)."""
    backend = CLI_BACKENDS[lib]
    return ["--backend", backend] if backend else None


def steady_rate(run: ChildRun, count: int) -> float:
    """Images/s over the second half of the records.

    The first half contains start-up and the batches the decode workers got ahead on meanwhile
    (consumed at the model's solo speed); from the middle on, decode and model share the cores.
    """
    return run.steady_rate(count // 2) if run.returncode == 0 else float("nan")


def middle_rate(run: ChildRun, count: int) -> float:
    """Images/s over the middle half of ``count`` records: decode and model both running, nothing buffered."""
    if run.returncode != 0 or len(run.times) < count:
        return float("nan")
    first, last = count // 4, 3 * count // 4
    return (last - first) / (run.times[last - 1] - run.times[first - 1])


def contender_json(args: list[str]) -> dict[str, Any] | None:
    """One run of benchmarks/contenders.py, quietly: the JSON of its last line (None when it failed)."""
    run = quietly(" ".join(args[:3]), lambda: run_child([PY, str(HERE / "contenders.py"), *args]))
    if run.returncode != 0 or not run.lines:
        log(f"{' '.join(args)} failed: {run.stderr[-500:]}")
        return None
    return json.loads(run.lines[-1])
