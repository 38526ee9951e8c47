"""The machine facts every layer reads (effnet_cli.host) and the cache's waiting lock (effnet_cli.output.lock)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from effnet_cli import host
from effnet_cli.output import OutputBusyError, OutputLock


def test_usable_cores_is_the_affinity_and_never_below_one(monkeypatch):
    assert host.usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())
    assert host.usable_cores() == 1


def test_usable_cores_falls_back_to_the_cpu_count_without_affinity(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert host.usable_cores() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert host.usable_cores() == 1


def test_the_decode_workers_and_the_device_split_read_the_same_cores():
    from effnet_cli.data.loader import default_workers
    from effnet_cli.scale import devices

    assert devices.usable_cores is host.usable_cores
    assert default_workers() == max(1, min(host.usable_cores(), 4))


def test_package_version_of_a_missing_package_is_a_dash():
    assert host.package_version("surely-not-an-installed-package") == "-"
    assert host.package_version("numpy") == __import__("numpy").__version__
    assert host.installed("numpy") and not host.installed("surely_not_an_installed_package")


def test_a_waiting_lock_takes_over_once_the_holder_releases(tmp_path: Path):
    lock, entry = tmp_path / "entry.lock", tmp_path / "entry"
    first = OutputLock(lock, entry).acquire()
    with pytest.raises(OutputBusyError):
        OutputLock(lock, entry).acquire()  # the writers' lock refuses at once
    taken = threading.Event()
    waiter = OutputLock(lock, entry, wait=True)
    thread = threading.Thread(target=lambda: (waiter.acquire(), taken.set()))
    thread.start()
    assert not taken.wait(0.3)  # still waiting while the first holds it
    first.release()
    assert taken.wait(10)
    thread.join()
    assert lock.is_file()  # the waiter holds the (new) lock file
    waiter.release()
    assert not lock.exists()
