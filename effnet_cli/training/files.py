"""Every file a fine-tuning run writes goes through :func:`write_file`, into an output directory it owns.

:func:`write_file` writes to a temporary file in the target directory,
fsyncs it and renames it into place, so a killed run never leaves a truncated
file under a real name; the file's mode follows the umask. :class:`OutputDir`
keeps a ledger of the names it wrote, and refuses a directory that holds
anything else rather than overwrite a file it did not write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from effnet_cli.errors import InputError

LEDGER = ".effnet-finetune.json"  # names this tool wrote into the directory
LOCK = ".effnet-finetune.lock"  # held while a run writes the directory: a second run is refused at once


def write_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through effnet's output layer: exclusive temporary beside it, fsync, rename."""
    from effnet_cli.output import write_bytes

    write_bytes(path, data)
    return Path(path)


class OutputDir:
    """An output directory that only ever holds files this tool wrote (listed in its ledger)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.written: set[str] = set()

    def claim(self) -> None:
        """Create the directory, or accept an existing one whose every entry we wrote; else refuse."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} exists and is not a directory.")
        from effnet_cli.output import OutputLock, check_writable, make_dir, temporaries_of

        check_writable(self.path, is_dir=True)  # read-only, or not ours to write: one line, exit status 2
        make_dir(self.path)

        self._lock = OutputLock(self.path / LOCK, self.path).acquire()  # until release(), or the process ends
        ledger = self.path / LEDGER
        if ledger.is_file():
            try:
                self.written = set(json.loads(ledger.read_text("utf-8"))["files"])
            except (OSError, ValueError, KeyError, TypeError):
                self.release()
                raise InputError(f"{ledger} is unreadable; use another output directory.") from None
        for leftover in temporaries_of(self.path, [self.path / name for name in self.written | {LEDGER}]):
            os.unlink(leftover)  # our own leftover from a killed write
        foreign = [entry for entry in sorted(os.listdir(self.path))
                   if entry not in (LEDGER, LOCK) and entry not in self.written]
        if foreign:
            self.release()  # refused: leave the directory exactly as it was
            raise InputError(f"{self.path} already holds files effnet did not write ({foreign[0]!r}"
                             + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                             + "); choose an empty or new output directory.")

    def release(self) -> None:
        """Let another run write the directory (removes the lock file)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def write(self, name: str, data: bytes) -> Path:
        """Write one file into the directory (recording it in the ledger first)."""
        if name not in self.written:
            self.written.add(name)
            write_file(self.path / LEDGER, json.dumps({"files": sorted(self.written)}).encode() + b"\n")
        return write_file(self.path / name, data)

    def remove(self, name: str) -> None:
        """Delete a file this run wrote (the checkpoint, once the run is complete)."""
        if name in self.written:
            try:
                os.unlink(self.path / name)
            except FileNotFoundError:
                pass
