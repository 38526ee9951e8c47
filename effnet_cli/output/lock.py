"""One writer per output: a lock file held with ``flock`` for the length of a run.

A second writer is refused at once (the lock is taken without waiting) with
:class:`OutputBusyError`, whose message names the output, the lock file and
the holder (pid, host and start time, written into the lock file by the
holder). The kernel releases an ``flock`` when its holder exits, however it
exits, so a killed run never leaves a stale lock behind; the lock file itself
is removed on release, and a writer that finds it replaced between opening
and locking it starts over (the usual unlink-safe lock-file protocol).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import display_path

__all__ = ["OutputBusyError", "OutputLock"]


class OutputBusyError(InputError):
    """Another process is writing the same output."""


class OutputLock:
    """``with OutputLock(lock_path, output):`` — hold the lock of ``output`` for the block.

    ``output`` is what the lock protects (a file or a directory), named in the
    error a second writer gets.
    """

    def __init__(self, path: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
        self.path, self.output = Path(path), Path(output)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock now or raise :class:`OutputBusyError` naming the holder."""
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                raise InputError(f"The lock file {display_path(self.path)} is a symlink, which effnet never "
                                 f"follows; remove it.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
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
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
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
