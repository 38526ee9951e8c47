"""What a failed write becomes: one sentence naming the output and the cause.

Every write, flush, fsync, truncate and rename of this layer runs inside :func:`writing`, which
turns the ``OSError`` of a full disk (``ENOSPC``), a quota (``EDQUOT``), a read-only file system
(``EROFS``), a refused permission (``EACCES``/``EPERM``) or a failing device (``EIO``) into a
:class:`~effnet_cli.errors.WriteError`: "cannot write feats.npy: no space left on device". The
name shown is the output's final name, never the temporary or partial file the bytes were going
to, since that is the name the user gave. :class:`OutputFile` is the raw file under every file
object this layer hands out, so a failure inside a caller's ``write`` (a record stream, a
Parquet writer) is translated too.

:func:`check_writable` finds an unwritable output directory from the arguments alone, before any
work: the same sentence, exit status 2.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from collections.abc import Iterator
from pathlib import Path

from effnet_cli.errors import UnwritableOutputError, WriteError
from effnet_cli.records.pathtext import display_path

__all__ = ["OutputFile", "cause_of", "check_writable", "shown_target", "write_error", "writing"]

# The causes a user can act on, worded as `strerror` words them (lower case, to sit inside a sentence).
_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
}
_PARTIAL_SUFFIXES = (".partial.json", ".partial")


def shown_target(path: str | os.PathLike[str]) -> Path:
    """The name a user knows for one of our partial files: ``feats.npy`` for ``feats.npy.partial`` or
    ``.emb_00000.npy.partial``; any other path as it is."""
    path = Path(path)
    for suffix in _PARTIAL_SUFFIXES:
        if path.name.endswith(suffix):
            return path.with_name(path.name.removesuffix(suffix).removeprefix("."))
    return path


def cause_of(exc: OSError) -> str:
    """Why a write failed, in a few lower-case words ("no space left on device")."""
    if exc.errno in _CAUSES:
        return _CAUSES[exc.errno]
    text = exc.strerror or str(exc) or type(exc).__name__
    return " ".join(text.split()).rstrip(".").lower()


def write_error(exc: OSError, target: str | os.PathLike[str], *, before_work: bool = False) -> WriteError:
    """The one-line error for ``exc`` met while writing ``target``: "cannot write TARGET: CAUSE".

    ``before_work``: found before the run did anything, so a usage error (exit status 2).
    """
    kind = UnwritableOutputError if before_work else WriteError
    hint = "; free some space and run again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return kind(f"cannot write {display_path(target)}: {cause_of(exc)}{hint}.", exc.errno)


@contextlib.contextmanager
def writing(target: str | os.PathLike[str], *, restate: bool = False) -> Iterator[None]:
    """``with writing(target):`` — an ``OSError`` raised inside becomes :func:`write_error` for ``target``.

    ``restate``: a :class:`WriteError` from inside names ``target`` too (a directory staged under a
    temporary name is known to the user by its final one).
    """
    try:
        yield
    except WriteError as exc:
        if not restate:
            raise
        raise write_error(exc, target) from exc
    except OSError as exc:
        if exc.errno is None:
            raise
        raise write_error(exc, target) from exc


def check_writable(path: str | os.PathLike[str], *, is_dir: bool = False,
                   shown: str | os.PathLike[str] | None = None) -> None:
    """Refuse (exit status 2) an output whose nearest existing directory cannot be written.

    ``path`` is a file to be written in its directory, or with ``is_dir`` a directory to be written
    into; the error names ``shown`` (default ``path``). ``access(2)`` answers for this user, and with
    ``EROFS`` for a read-only file system even for root.
    """
    target = Path(path)
    directory = target if is_dir else target.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if os.access(directory, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    code = errno.EROFS if read_only else errno.EACCES
    raise write_error(OSError(code, os.strerror(code)), target if shown is None else shown, before_work=True)


class OutputFile(io.RawIOBase):
    """The raw file under the file objects of this layer: plain ``os`` calls, each failure a :class:`WriteError`.

    ``shown`` is the name a failure names (the output's final name). Wrapped in
    :class:`io.BufferedWriter` / :class:`io.BufferedRandom` like any raw file.
    """

    def __init__(self, fd: int, shown: str | os.PathLike[str], *, readable: bool = False) -> None:
        super().__init__()
        self._fd, self.shown, self._readable = fd, Path(shown), readable

    @property
    def name(self) -> str:
        return str(self.shown)

    def fileno(self) -> int:
        return self._fd

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return os.readv(self._fd, [buffer])

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        with writing(self.shown):
            return os.write(self._fd, data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def truncate(self, size: int | None = None) -> int:
        size = self.tell() if size is None else size
        with writing(self.shown):
            os.ftruncate(self._fd, size)
        return size

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()
