"""Start-up cost of ``effnet classify``: one photo and 16 photos, whole process, wall time and peak RSS.

    python benchmarks/startup.py            # 5 paired rounds, the bundled Lite0
    python benchmarks/startup.py --rounds 3

Each round runs every contender once, in the same order, as a fresh process: effnet classify
with the default backend (its export cached beforehand, so it runs the lean, torch-free path),
with ``--backend onnxruntime``, ``--backend openvino`` and ``--backend torch``, and the plain
ONNX Runtime script of docs/export.md ("Running model.onnx without effnet"), taken from the
page itself. Wall time is measured around the process; peak RSS is the largest resident set
of the process or of any child it waited for (``wait4``'s rusage; effnet's decode workers are
smaller than its main process). The table gives medians over the rounds and the ratio of each
to the plain script's median. effnet's bytecode is compiled first, as an installed package
has it. Everything runs in a private effnet cache under a temporary directory; nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "tests" / "data" / "images"
if not SAMPLES.is_dir():
    SAMPLES = REPO.parent / "shared" / "images"
sys.path.insert(0, str(REPO))


def plain_script(model_dir: Path) -> str:
    """The plain ONNX Runtime program of docs/export.md, pointed at ``model_dir``."""
    text = (REPO / "docs" / "export.md").read_text("utf-8")
    match = re.search(r"\$ python - tests/data/images/\*\.jpg <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    if match is None:
        raise SystemExit("docs/export.md no longer holds the plain ONNX Runtime script")
    return match.group(1).replace('model_dir = "lite0-onnx"', f"model_dir = {str(model_dir)!r}")


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process; an error if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} … failed ({proc.returncode}): {err[-500:]}")
    return wall, usage.ru_maxrss / 1024


def photo_sets(scratch: Path) -> dict[str, list[str]]:
    """One photo, and 16 distinct files (copies of the sample photos; effnet drops repeated paths)."""
    samples = sorted(SAMPLES.glob("*.jpg"))
    many = scratch / "photos16"
    many.mkdir()
    for i in range(16):
        shutil.copy(samples[i % len(samples)], many / f"{i:02d}.jpg")
    return {"1 photo": [str(samples[0])], "16 photos": sorted(str(p) for p in many.iterdir())}


def contenders(scratch: Path) -> dict[str, list[str]]:
    effnet = [sys.executable, "-m", "effnet_cli", "classify", "--model", "lite0", "-f", "jsonl", "-q"]
    script = scratch / "plain_ort.py"
    export = scratch / "lite0-onnx"
    subprocess.run([sys.executable, "-m", "effnet_cli", "export", "lite0", "-o", str(export)], check=True,
                   stdout=subprocess.DEVNULL)
    script.write_text(plain_script(export), "utf-8")
    return {"effnet, default backend (export cached)": effnet,
            "effnet --backend onnxruntime": effnet + ["--backend", "onnxruntime"],
            "effnet --backend openvino": effnet + ["--backend", "openvino"],
            "effnet --backend torch": effnet + ["--backend", "torch"],
            "plain ONNX Runtime script (docs/export.md)": [sys.executable, str(script)]}


def measure(rounds: int) -> tuple[dict[tuple[str, str], tuple[float, float]], str]:
    from effnet_cli.host import cpu_name

    scratch = Path(tempfile.mkdtemp(prefix="effnet-startup-"))
    env = {**os.environ, "EFFNET_CACHE": str(scratch / "cache"), "PYTHONPATH": str(REPO)}
    try:
        sets = photo_sets(scratch)
        commands = contenders(scratch)
        for name, command in commands.items():  # warm-up: exports made and cached, files in the page cache
            for photos in sets.values():
                run_once(command + photos, env)
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(rounds):
            for set_name, photos in sets.items():
                for name, command in commands.items():
                    samples.setdefault((name, set_name), []).append(run_once(command + photos, env))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {key: (statistics.median(w for w, _ in values), statistics.median(r for _, r in values))
               for key, values in samples.items()}
    return medians, cpu_name()


def table(medians: dict[tuple[str, str], tuple[float, float]], cpu: str, rounds: int) -> str:
    names = list(dict.fromkeys(name for name, _ in medians))
    sets = list(dict.fromkeys(s for _, s in medians))
    plain = names[-1]
    lines = [f"CPU: {cpu}; {os.cpu_count()} logical cores; load average {os.getloadavg()[0]:.1f} at the end; "
             f"medians of {rounds} paired rounds; ratios to the plain script", "",
             "| command | " + " | ".join(f"{s}: wall s (×) | {s}: peak RSS MB (×)" for s in sets) + " |",
             "| --- |" + " ---: | ---: |" * len(sets)]
    for name in names:
        cells = []
        for s in sets:
            wall, rss = medians[(name, s)]
            base_wall, base_rss = medians[(plain, s)]
            cells += [f"{wall:.2f} ({wall / base_wall:.2f}×)", f"{rss:.0f} ({rss / base_rss:.2f}×)"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def installed_bytecode() -> None:
    """Compile effnet's modules to bytecode first, as ``pip install`` does.

    From a checkout, Python compiles a module whose bytecode is missing or older than its source
    at every start when it may not write the result (PYTHONDONTWRITEBYTECODE, a read-only tree):
    about 1 ms a module, 48 ms of a one-photo run after 45 modules were edited. An installed
    package never pays that, so neither does this measurement.
    """
    import compileall

    compileall.compile_dir(str(REPO / "effnet_cli"), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (at least 3)")
    args = parser.parse_args()
    rounds = max(3, args.rounds)
    installed_bytecode()
    medians, cpu = measure(rounds)
    print(table(medians, cpu, rounds))


if __name__ == "__main__":
    main()
