"""Running one contender in a subprocess and measuring it from outside: time per output line, memory.

The child prints one line per finished image (or one JSON line for forward
runs). A reader thread timestamps every line as it arrives, so throughput can
be taken after the first batch (start-up and model loading excluded) as well
as over the whole process. Memory is measured two ways: the main process's
exact resident-set high-water mark (``ru_maxrss`` from ``wait4``; for a
process tree this is the largest single process, not the sum), and the
process tree's summed PSS (proportional set size, so pages shared between
the decode workers are counted once), sampled twice a second: reading
smaps_rollup walks the target's page tables under its memory lock, so
sampling faster measurably slows the process being measured.

The machine may be shared. :func:`wait_for_quiet` holds a measurement back
until the CPUs are idle, and every :class:`ChildRun` records how much CPU
other programs used while it ran (all CPU time in /proc/stat, minus the
child's and this process's own), so run.py can repeat a disturbed measurement.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_S = 0.5
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_busy_s() -> float:
    """CPU seconds all programs together have spent busy since boot (/proc/stat, every core)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def wait_for_quiet(*, busy_below: float = 0.1, window_s: float = 1.0, max_wait_s: float = 120.0) -> float:
    """Wait until the CPUs are at most ``busy_below`` busy over a ``window_s`` window; seconds waited.

    Gives up after ``max_wait_s`` (the measurement then runs anyway and its
    ``foreign_share`` shows the disturbance).
    """
    start = time.perf_counter()
    while True:
        before = cpu_busy_s()
        time.sleep(window_s)
        busy = (cpu_busy_s() - before) / (window_s * cores())
        waited = time.perf_counter() - start
        if busy <= busy_below or waited >= max_wait_s:
            return waited
        time.sleep(2.0)


@dataclass
class ChildRun:
    """What one subprocess did: its stdout lines with arrival times, exit status, timing and memory."""

    cmd: list[str]
    returncode: int
    wall_s: float
    lines: list[str]
    times: list[float]  # arrival of each stdout line, seconds after the start
    stderr: str
    peak_rss_mb: float  # main process high-water mark (exact)
    peak_tree_pss_mb: float  # whole process tree, summed PSS (sampled)
    peak_tree_rss_mb: float = 0.0  # whole process tree, summed RSS (sampled; shared pages counted per process)
    foreign_share: float = 0.0  # share of all CPU time used by other programs while it ran
    extra: dict = field(default_factory=dict)

    def steady_rate(self, first: int) -> float:
        """Lines per second after the first ``first`` lines (the first batch) arrived."""
        if len(self.times) <= first:
            return float("nan")
        span = self.times[-1] - self.times[first - 1]
        return (len(self.times) - first) / span if span > 0 else float("nan")

    def overall_rate(self) -> float:
        """Lines per second over the whole process lifetime, start-up included."""
        return len(self.lines) / self.wall_s if self.wall_s > 0 else float("nan")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: the ppid follows the last ")".
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_memory_kb(root: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) in KiB of ``root`` and all its descendants; processes already gone count 0.

    Summed RSS counts pages the processes share (libraries, a forked parent's memory) once per
    process; PSS divides each shared page among its sharers, so its sum is the memory the tree holds.
    """
    kids = _children_map()
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(kids.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
                    break
        except OSError:
            continue
    return rss, pss


def run_child(cmd: list[str], *, env: dict[str, str] | None = None, stdin_text: str | None = None,
              timeout: float | None = None, cwd: str | Path | None = None) -> ChildRun:
    """Run ``cmd`` to completion, timestamping its stdout lines and sampling its memory."""
    busy_before = cpu_busy_s()
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                            env=env, cwd=cwd, text=True, bufsize=1)
    lines: list[str] = []
    times: list[float] = []
    err: list[str] = []
    peak_pss = [0]
    peak_rss = [0]
    done = threading.Event()

    def read_out() -> None:
        for line in proc.stdout:
            times.append(time.perf_counter() - start)
            lines.append(line.rstrip("\n"))

    def read_err() -> None:
        err.append(proc.stderr.read())

    def sample() -> None:
        while not done.is_set():
            rss, pss = tree_memory_kb(proc.pid)
            peak_pss[0], peak_rss[0] = max(peak_pss[0], pss), max(peak_rss[0], rss)
            done.wait(SAMPLE_S)

    threads = [threading.Thread(target=t, daemon=True) for t in (read_out, read_err, sample)]
    for t in threads:
        t.start()
    if stdin_text is not None:
        proc.stdin.write(stdin_text)
        proc.stdin.close()
    deadline = None if timeout is None else start + timeout
    # Reap with wait4 ourselves: it returns the child's resource usage, including ru_maxrss.
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() > deadline:
            proc.kill()
        time.sleep(0.01)
    wall = time.perf_counter() - start
    done.set()
    for t in threads:
        t.join(timeout=10)
    busy = cpu_busy_s() - busy_before
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
    # The child's usage includes its reaped descendants (decode workers, DataLoader workers).
    foreign = busy - (usage.ru_utime + usage.ru_stime) - own
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(cmd=cmd, returncode=proc.returncode, wall_s=wall, lines=lines, times=times,
                    stderr="".join(err), peak_rss_mb=usage.ru_maxrss / 1024, peak_tree_pss_mb=peak_pss[0] / 1024,
                    peak_tree_rss_mb=peak_rss[0] / 1024,
                    foreign_share=max(0.0, foreign) / (wall * cores()))
