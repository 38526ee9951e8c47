"""Several devices on one machine: one worker process per device, each writing its own partition's shards.

``--devices cuda:0,cuda:1`` splits a sharded job round-robin (worker ``i`` of
``n`` takes the inputs at positions ≡ i mod n of the job's list, see
:meth:`effnet_cli.scale.shards.Partition.split`) and runs each part in a process
of its own, started with the ``spawn`` method (forking a process that has
touched CUDA is unsafe). Workers load their own copy of the model on their
device, run the same code as a single-device run, and report progress and
per-input failures through a queue, so the parent shows one progress bar.

A worker that dies (out of memory, a driver fault, SIGKILL) costs only its
unfinished shard: the others finish, the run ends with a
:class:`WorkerError`, and ``--resume`` finishes exactly the unfinished shards.
Nothing here prints.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from effnet_cli.errors import EffnetError, InputError
from effnet_cli.host import usable_cores
from effnet_cli.scale.shards import ShardJob, Summary, plan_shards
from effnet_cli.scale.spec import EngineSpec, RunOptions

__all__ = ["EngineSpec", "WorkerError", "parse_devices", "split_job", "run_on_devices"]

# Seconds the parent waits on the queue before checking that every worker is alive.
_POLL_S = 0.2


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


def _exit_with_parent() -> None:
    """Make this worker end when the parent process is gone.

    Workers cannot be daemonic processes (they start their own decode
    processes), so nothing else stops them if the parent is SIGKILLed; an
    orphan would keep writing shards next to the rerun that resumes them.
    """
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="effnet-parent-watch", daemon=True).start()


def _worker_main(task: _WorkerTask, events: Any) -> None:
    """Body of a device worker: load the model, write this partition's shards, report through ``events``."""
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
    n = task.number
    try:
        engine = task.spec.build(task.device)
        into = embed_into_shards if task.job.kind == "embed" else classify_into_shards
        summary = into(engine, task.job, task.run,
                       on_plan=lambda plan: events.put(("progress", n, plan.done_inputs)),
                       on_progress=lambda count: events.put(("progress", n, count)),
                       on_failure=lambda result: events.put(("failure", n, (result.path, result.error))))
    except EffnetError as exc:
        events.put(("error", n, str(exc)))
        raise SystemExit(1) from None
    except Exception as exc:  # a bug or a device fault: one line to the parent, not a traceback in its output
        events.put(("error", n, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    events.put(("done", n, summary))


@dataclass
class _Failure:
    """Stand-in for an inference Result, enough for the CLI's per-input error line."""

    path: str
    error: str


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


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


def run_on_devices(job: ShardJob, devices: list[str], spec: EngineSpec, run: RunOptions, *,
                   on_progress: Callable[[int], None] | None = None,
                   on_failure: Callable[[Any], None] | None = None) -> Summary:
    """Run ``job`` split across ``devices``, one spawned worker process each; returns the merged counts.

    ``run.workers`` (decode processes) applies per device worker. Torch
    gets ``cores // len(devices)`` threads in each worker, and a runtime
    backend on the CPU that many cores of its own, so the workers do not
    fight over the cores. Raises :class:`WorkerError` naming every worker
    that failed, after the others have finished their partitions.
    """
    jobs = split_job(job, len(devices))
    # Refuse a bad directory (shards already there without --resume, another
    # split, other settings) here, once, rather than in every worker.
    for sub in jobs:
        plan_shards(sub)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    threads = max(1, usable_cores() // len(devices))
    processes = []
    for i, (device, sub) in enumerate(zip(devices, jobs)):
        task = _WorkerTask(number=i, device=device, threads=threads,
                           cores=_cores_of(i, len(devices), device, spec.backend), spec=spec, job=sub, run=run)
        proc = ctx.Process(target=_worker_main, args=(task, events), name=f"effnet-device-{i}")
        proc.start()
        processes.append(proc)

    summary = Summary()
    finished: dict[int, str | None] = {}  # worker -> None (done) or the reason it failed

    def handle(message: tuple[str, int, Any]) -> None:
        kind, n, payload = message
        if kind == "progress" and on_progress is not None:
            on_progress(payload)
        elif kind == "failure" and on_failure is not None:
            on_failure(_Failure(*payload))
        elif kind == "done":
            summary.merge(payload)
            finished[n] = None
        elif kind == "error":
            finished[n] = payload

    try:
        while len(finished) < len(processes):
            try:
                handle(events.get(timeout=_POLL_S))
                continue
            except queue.Empty:
                pass
            for n, proc in enumerate(processes):
                if n in finished or proc.is_alive():
                    continue
                # Its last messages may still be in the pipe: drain before calling it dead.
                try:
                    while True:
                        handle(events.get(timeout=_POLL_S))
                except queue.Empty:
                    pass
                if n not in finished:
                    finished[n] = f"{_describe_exit(proc.exitcode)}"
    except BaseException:
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=10)
        raise
    for proc in processes:
        proc.join()
    failed = {n: why for n, why in finished.items() if why is not None}
    if failed:
        what = "; ".join(f"worker {n} ({devices[n]}) {why}" if why.startswith(("was ", "exited", "stopped"))
                         else f"worker {n} ({devices[n]}): {why}" for n, why in sorted(failed.items()))
        raise WorkerError(f"{what}; finished shards are kept: rerun the same command with --resume "
                          f"to finish {job.directory}.")
    return summary
