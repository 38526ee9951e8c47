"""One writer per output: a lock file held with ``flock`` for the length of a run.

A second writer is refused at once (the lock is taken without waiting) with
:class:`OutputBusyError`, whose message names the output, the lock file and
the holder (pid, host and start time, written into the lock file by the
holder). A lock made with ``wait=True`` waits for the holder instead: what
effnet's cache uses, where a second run wants the first one's export rather
than a refusal. The kernel releases an ``flock`` when its holder exits, however it
exits, so a killed run never leaves a stale lock behind; the lock file itself
is removed on release, and a writer that finds it replaced between opening
and locking it starts over (the usual unlink-safe lock-file protocol).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError
from effnet_cli.output.faults import write_error
from effnet_cli.records.pathtext import display_path

__all__ = ["OutputBusyError", "OutputLock"]


class OutputBusyError(InputError):
    """Another process is writing the same output."""


class OutputLock:
    """``with OutputLock(lock_path, output):`` — hold the lock of ``output`` for the block.

    ``output`` is what the lock protects (a file or a directory), named in the
    error a second writer gets. ``wait=True``: wait for the holder to finish
    instead of refusing.
    """

    def __init__(self, path: str | os.PathLike[str], output: str | os.PathLike[str], *, wait: bool = False) -> None:
        self.path, self.output = Path(path), Path(output)
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock now (or, with ``wait``, once the holder releases it); else :class:`OutputBusyError`."""
        # A waiting writer retries only after a holder released the lock, so it has no bound on retries;
        # one that refuses gives up after a run of files replaced under it, which only a race can cause.
        attempts = itertools.count() if self.wait else range(100)
        for _ in attempts:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # a directory that cannot be written: said before any work
                    raise write_error(exc, self.output, before_work=True) from exc
                raise InputError(f"The lock file {display_path(self.path)} is a symlink, which effnet never "
                                 f"follows; remove it.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException as exc:  # a busy lock, or Ctrl-C while waiting: the descriptor is not kept
                os.close(fd)
                if not isinstance(exc, OSError) or exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise OutputBusyError(self._busy_message()) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
            except OSError as exc:  # a full disk: said before any work; the lock file is ours to remove
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                os.close(fd)
                raise write_error(exc, self.output, before_work=True) from exc
            self._fd = fd
            return self
        raise OutputBusyError(self._busy_message())

    def _busy_message(self) -> str:
        try:
            holder: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            who = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
        except (OSError, ValueError, AttributeError):
            who = "another process"
        return (f"{display_path(self.output)} is being written by {who} (lock {display_path(self.path)}); "
                f"wait for it to finish or choose another output.")

    def release(self) -> None:
        """Remove the lock file and release the lock (in that order, so no one locks a removed file unnoticed)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
