"""Several devices on one machine: one worker process per device, each writing its own partition's shards.

``--devices cuda:0,cuda:1`` splits a sharded job round-robin (worker ``i`` of
``n`` takes the inputs at positions ≡ i mod n of the job's list, see
:meth:`effnet_cli.scale.shards.Partition.split`) and runs each part in a process
of its own, started with the ``spawn`` method (forking a process that has
touched CUDA is unsafe). Workers load their own copy of the model on their
device, run the same code as a single-device run, and report progress and
per-input failures to the parent, which shows one progress bar.

A worker that dies (the OOM killer, a driver fault, SIGKILL, a non-zero
exit) is started again after a pause (1 s, then 2 s, 4 s), and the new one
runs its partition with ``--resume``'s own plan: the shards the dead one
finished are kept, a shard it left half-written continues after its last
record, the rest are written. Each restart is reported through
``on_restart``. A partition whose worker dies :data:`RESTARTS` + 1 times in a
row without finishing one more input is given up: the others finish, the run
ends with a :class:`WorkerError` naming the device and the inputs in flight,
and ``--resume`` finishes exactly the unfinished shards. An error the worker
reports as an :class:`EffnetError` (bad settings, a full disk) would only
repeat, so it is not retried. Each worker talks to the parent through a pipe
of its own, so a worker killed halfway through a message garbles nothing but
its own channel. Nothing here prints.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from typing import Any

from effnet_cli.errors import EffnetError, InputError
from effnet_cli.host import usable_cores
from effnet_cli.records.pathtext import display_path
from effnet_cli.scale.shards import ShardJob, Summary, plan_shards
from effnet_cli.scale.spec import EngineSpec, RunOptions

__all__ = ["EngineSpec", "Restart", "RESTARTS", "WorkerError", "parse_devices", "split_job", "run_on_devices"]

# Restarts of one partition's worker in a row (without it finishing one more input) before the partition
# is given up; a worker that makes progress between deaths (a slow leak, an occasional OOM kill) goes on.
RESTARTS = 3
_BACKOFF_S = 1.0  # pause before the first restart in a row; doubles with each further one
_IN_FLIGHT_SHOWN = 5  # inputs named in the message of a partition given up

# Test-only hook, inert unless the variable is set: "N:K" makes device worker N SIGKILL itself once it has
# reported K inputs done (0: as soon as it has planned its shards), in its first attempt; "N:K:A" in each
# of its first A attempts. The test suite uses it to kill a worker at a known point.
TEST_KILL_ENV = "EFFNET_TEST_KILL_WORKER"


class WorkerError(EffnetError):
    """A device worker failed; the shards it finished are kept and ``--resume`` finishes the rest."""


def parse_devices(text: str) -> list[str]:
    """``--devices`` -> one device string per worker.

    Accepted: a comma-separated list (``cuda:0,cuda:1``, ``cpu,cpu``),
    ``all`` (every visible CUDA device), and ``KIND:xN`` shorthands for
    CPU workers: ``cpu:2`` is two CPU workers (a CPU has no device index, so
    ``cpu:N`` can only mean a count).
    """
    import torch

    text = text.strip()
    if text == "all":
        count = torch.cuda.device_count()
        if count == 0:
            raise InputError("--devices all found no CUDA device; use --devices cpu:N for N CPU workers.")
        return [f"cuda:{i}" for i in range(count)]
    devices: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise InputError(f"--devices has an empty item: {text!r}.")
        kind, _, number = item.partition(":")
        if kind == "cpu":
            if number and not (number.isdigit() and int(number) >= 1):
                raise InputError(f"--devices cpu:N needs a worker count N ≥ 1, got {item!r}.")
            devices.extend(["cpu"] * (int(number) if number else 1))
        elif kind == "cuda":
            if number and not number.isdigit():
                raise InputError(f"--devices: {item!r} is not cuda or cuda:N.")
            index = int(number or 0)
            available = torch.cuda.device_count()
            if index >= available:
                raise InputError(f"--devices {item}: this machine has {available} CUDA device"
                                 f"{'s' if available != 1 else ''}.")
            devices.append(f"cuda:{index}")
        elif kind == "mps" and not number:
            devices.append("mps")
        else:
            raise InputError(f"--devices takes cpu, cpu:N, cuda:N, mps or all, got {item!r}.")
    return devices


@dataclass
class _WorkerTask:
    """What one worker process needs; picklable."""

    number: int
    device: str
    threads: int
    cores: list[int] | None  # the CPU cores this worker keeps to (a runtime backend on the CPU), else None
    spec: EngineSpec
    job: ShardJob
    run: RunOptions
    attempt: int = 0  # 0 for the first worker of this partition, 1 for its first replacement ...


def _exit_with_parent() -> None:
    """Make this worker end when the parent process is gone.

    Workers cannot be daemonic processes (they start their own decode
    processes), so nothing else stops them if the parent is SIGKILLed; an
    orphan would keep writing shards next to the rerun that resumes them.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="effnet-parent-watch", daemon=True).start()


def _test_kill_point(task: _WorkerTask) -> int | None:
    """Inputs after which this worker kills itself, from :data:`TEST_KILL_ENV`; None (always, in real runs)."""
    value = os.environ.get(TEST_KILL_ENV)
    if not value:
        return None
    number, after, *attempts = value.split(":")
    if int(number) != task.number or task.attempt >= int(attempts[0] if attempts else 1):
        return None
    return int(after)


def _worker_main(task: _WorkerTask, conn: Any) -> None:
    """Body of a device worker: load the model, write this partition's shards, report through ``conn``."""
    # Ctrl-C in the terminal reaches every process of the group; the parent
    # decides what happens, so a worker must not die with a traceback first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    import torch

    from effnet_cli.scale.shards import classify_into_shards, embed_into_shards

    torch.set_num_threads(task.threads)
    if task.cores is not None:
        # ONNX Runtime and OpenVINO size their thread pools from the cores the process may use: its share.
        os.sched_setaffinity(0, task.cores)
    kill_at, done = _test_kill_point(task), 0

    def planned(plan: Any) -> None:
        conn.send(("plan", plan.done_inputs))
        if kill_at == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    def progressed(count: int) -> None:
        nonlocal done
        conn.send(("progress", count))
        done += count
        if kill_at is not None and done >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        engine = task.spec.build(task.device)
        into = embed_into_shards if task.job.kind == "embed" else classify_into_shards
        summary = into(engine, task.job, task.run, on_plan=planned, on_progress=progressed,
                       on_failure=lambda result: conn.send(("failure", (result.path, result.error))))
    except EffnetError as exc:  # the user's settings or the machine's (a full disk): a new worker would repeat it
        conn.send(("error", (str(exc), False)))
        raise SystemExit(1) from None
    except Exception as exc:  # a bug or a device fault: one line to the parent, not a traceback in its output
        conn.send(("error", (f"{type(exc).__name__}: {exc}", True)))
        raise SystemExit(1) from None
    conn.send(("done", summary))


@dataclass
class _Failure:
    """Stand-in for an inference Result, enough for the CLI's per-input error line."""

    path: str
    error: str


@dataclass(frozen=True)
class Restart:
    """A device worker that died and is started again: what the CLI tells the user."""

    worker: int
    device: str
    reason: str  # "was killed by SIGKILL", "exited with status 3", "failed: RuntimeError: ..."
    restart: int  # 1 for the first restart in a row without progress, up to ``limit``
    limit: int
    delay: float  # seconds before the new worker starts
    redo_inputs: int  # inputs of the partition the new worker still has to process
    redo_shards: int  # shards it writes (or finishes: a half-written one continues after its last record)
    kept_shards: int  # finished shards of the partition, kept as they are


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _names(paths: list[str]) -> str:
    shown = ", ".join(display_path(p) for p in paths[:_IN_FLIGHT_SHOWN])
    more = len(paths) - _IN_FLIGHT_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def split_job(job: ShardJob, parts: int) -> list[ShardJob]:
    """``job`` divided round-robin into ``parts`` sub-jobs, one per device (see :meth:`Partition.split`)."""
    return [job.for_partition(part, job.paths[i::parts]) for i, part in enumerate(job.partition.split(parts))]


def _cores_of(number: int, workers: int, device: str, backend: str) -> list[int] | None:
    """The cores worker ``number`` of ``workers`` keeps to: its own slice, for a runtime backend on the CPU.

    Torch takes a thread count; ONNX Runtime and OpenVINO size their pools from the process's CPU
    set, so each CPU worker is given a disjoint share of it and the workers do not oversubscribe the cores.
    """
    if device != "cpu" or backend == "torch" or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // workers)
    first = (number * share) % len(cores)
    return cores[first:first + share]


@dataclass
class _Slot:
    """One partition, seen from the parent: the worker running it now and what it has done so far."""

    task: _WorkerTask
    done_inputs: int  # inputs finished when the current worker started: more at its death is progress
    first_kept: int  # shards finished before this run began (--resume): the rest were written by this run
    process: Any = None
    conn: Any = None  # the parent's end of the current worker's pipe; None once it has closed
    running: bool = False
    in_a_row: int = 0  # deaths in a row without progress
    restart_at: float | None = None  # when a replacement is due (time.monotonic())
    shown: int = 0  # inputs of this partition the progress bar has counted
    reached: int = 0  # inputs of this partition the current worker has accounted for
    reported: Counter = field(default_factory=Counter)  # failures shown so far, by (path, error)
    current: Counter = field(default_factory=Counter)  # failures the current worker has reported
    error: tuple[str, bool] | None = None  # what the current worker reported before exiting: text, retry?
    summary: Summary | None = None
    failed: str | None = None  # why the partition was given up

    @property
    def who(self) -> str:
        return f"worker {self.task.number} ({self.task.device})"


class _Supervisor:
    """Starts a worker per partition, relays their events, replaces the ones that die."""

    def __init__(self, ctx: Any, slots: list[_Slot], on_progress: Callable[[int], None] | None,
                 on_failure: Callable[[Any], None] | None, on_restart: Callable[[Restart], None] | None) -> None:
        self.ctx, self.slots = ctx, slots
        self.on_progress, self.on_failure, self.on_restart = on_progress, on_failure, on_restart

    def start(self, slot: _Slot) -> None:
        task = slot.task
        if task.attempt:  # a replacement picks up what is on disk, exactly as --resume would
            task = replace(task, job=replace(task.job, resume=True))
        reader, writer = self.ctx.Pipe(duplex=False)
        slot.process = self.ctx.Process(target=_worker_main, args=(task, writer), name=f"effnet-device-{task.number}")
        slot.process.start()
        writer.close()  # the worker holds the only writer: its death ends the pipe
        slot.conn, slot.running, slot.restart_at, slot.error = reader, True, None, None
        slot.current = Counter()
        slot.task = replace(slot.task, attempt=slot.task.attempt + 1)

    def receive(self, slot: _Slot) -> None:
        """Handle one message of ``slot``'s worker; at the end of its pipe, stop listening to it."""
        try:
            kind, payload = slot.conn.recv()
        except (EOFError, OSError, ValueError, TypeError, AttributeError, ImportError, IndexError):
            # The end of the pipe, or a message cut short by the worker's death.
            slot.conn.close()
            slot.conn = None
            return
        if kind in ("plan", "progress"):
            slot.reached = payload if kind == "plan" else slot.reached + payload
            if slot.reached > slot.shown:  # a replacement counts again what the bar already has
                if self.on_progress is not None:
                    self.on_progress(slot.reached - slot.shown)
                slot.shown = slot.reached
        elif kind == "failure":
            key = tuple(payload)
            slot.current[key] += 1
            if slot.current[key] > slot.reported[key]:  # not already shown by a worker that died
                slot.reported[key] = slot.current[key]
                if self.on_failure is not None:
                    self.on_failure(_Failure(*payload))
        elif kind == "done":
            payload.shards_written += payload.shards_kept - slot.first_kept  # a dead worker's shards: this run's
            payload.shards_kept = slot.first_kept
            slot.summary = payload
        elif kind == "error":
            slot.error = payload

    def ended(self, slot: _Slot) -> None:
        """``slot``'s worker exited: read its last words, then call the partition done, restart it, or give up."""
        while slot.conn is not None and slot.conn.poll(0):
            self.receive(slot)
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        slot.process.join()
        slot.running = False
        if slot.summary is not None:
            return
        reason, retry = slot.error or (_describe_exit(slot.process.exitcode), True)
        if slot.error is not None:
            reason = f"failed: {reason}"
        if not retry:
            slot.failed = f"{slot.who} {reason}"
            return
        try:
            plan = plan_shards(replace(slot.task.job, resume=True))
        except EffnetError as exc:
            slot.failed = f"{slot.who} {reason}, and its shards cannot be resumed: {exc}"
            return
        if not plan.todo:  # it died after finishing its last shard
            slot.summary = Summary(inputs=plan.kept_inputs, failures=plan.kept_failures,
                                   shards_written=plan.done_shards - slot.first_kept, shards_kept=slot.first_kept)
            return
        slot.in_a_row = 1 if plan.done_inputs > slot.done_inputs else slot.in_a_row + 1
        slot.done_inputs = plan.done_inputs
        if slot.in_a_row > RESTARTS:
            in_flight = plan.todo_paths[:slot.task.run.batch_size]  # the batch it was on: where it stopped
            slot.failed = (f"{slot.who} {reason} ({slot.in_a_row} times in a row without finishing an input"
                           f"{'; in flight: ' + _names(in_flight) if in_flight else ''})")
            return
        delay = _BACKOFF_S * 2 ** (slot.in_a_row - 1)
        slot.restart_at = time.monotonic() + delay
        if self.on_restart is not None:
            self.on_restart(Restart(worker=slot.task.number, device=slot.task.device, reason=reason,
                                    restart=slot.in_a_row, limit=RESTARTS, delay=delay,
                                    redo_inputs=len(plan.todo_paths), redo_shards=len(plan.todo),
                                    kept_shards=plan.done_shards))

    def step(self) -> None:
        """Start the replacements that are due, then wait for the next message, exit or due time."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                self.start(slot)
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        waiting: dict[Any, tuple[_Slot, bool]] = {}
        for slot in self.slots:
            if slot.running:
                waiting[slot.process.sentinel] = (slot, True)
                if slot.conn is not None:
                    waiting[slot.conn] = (slot, False)
        for ready in wait(list(waiting), timeout=max(0.0, min(due) - now) if due else None):
            slot, exited = waiting[ready]
            if not slot.running:
                continue
            if exited:
                self.ended(slot)
            elif slot.conn is not None:
                self.receive(slot)

    def run(self) -> None:
        """Until every partition is done or given up; on an interrupt, stop every worker first."""
        try:
            for slot in self.slots:
                self.start(slot)
            while any(slot.running or slot.restart_at is not None for slot in self.slots):
                self.step()
        except BaseException:
            for slot in self.slots:
                if slot.running and slot.process.is_alive():
                    slot.process.terminate()
            for slot in self.slots:
                if slot.running:
                    slot.process.join(timeout=10)
            raise


def _quiet_resource_tracker() -> None:
    """Keep multiprocessing's resource tracker from warning, at exit, about a killed worker's semaphores.

    The tracker removes what a SIGKILLed worker (or its decode processes) could not, which is its job;
    its "There appear to be N leaked semaphore objects" warning would only alarm the user of a run that
    replaced the worker and succeeded. It runs as its own interpreter, started (by the first worker's
    spawn) with this process's -W options, so the filter goes there.
    """
    import sys

    ignore = "ignore:resource_tracker:UserWarning"
    if ignore not in sys.warnoptions:
        sys.warnoptions.append(ignore)


def run_on_devices(job: ShardJob, devices: list[str], spec: EngineSpec, run: RunOptions, *,
                   on_progress: Callable[[int], None] | None = None,
                   on_failure: Callable[[Any], None] | None = None,
                   on_restart: Callable[[Restart], None] | None = None) -> Summary:
    """Run ``job`` split across ``devices``, one spawned worker process each; returns the merged counts.

    ``run.workers`` (decode processes) applies per device worker. Torch
    gets ``cores // len(devices)`` threads in each worker, and a runtime
    backend on the CPU that many cores of its own, so the workers do not
    fight over the cores. A worker that dies is replaced (see the module's
    notes), and ``on_restart`` hears of it. Raises :class:`WorkerError`
    naming every partition given up, after the others have finished.
    """
    jobs = split_job(job, len(devices))
    # Refuse a bad directory (shards already there without --resume, another
    # split, other settings) here, once, rather than in every worker.
    plans = [plan_shards(sub) for sub in jobs]
    threads = max(1, usable_cores() // len(devices))
    slots = [_Slot(task=_WorkerTask(number=i, device=device, threads=threads,
                                    cores=_cores_of(i, len(devices), device, spec.backend), spec=spec, job=sub,
                                    run=run),
                   done_inputs=plan.done_inputs, first_kept=plan.done_shards)
             for i, (device, sub, plan) in enumerate(zip(devices, jobs, plans))]
    _quiet_resource_tracker()
    _Supervisor(multiprocessing.get_context("spawn"), slots, on_progress, on_failure, on_restart).run()
    failed = [slot.failed for slot in slots if slot.failed is not None]
    if failed:
        raise WorkerError(f"{'; '.join(failed)}; finished shards are kept: rerun the same command with --resume "
                          f"to finish {job.directory}.")
    summary = Summary()
    for slot in slots:
        summary.merge(slot.summary)
    return summary
