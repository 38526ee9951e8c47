"""Publishing files whole or not at all, with the permissions the user's umask asks for.

Every file effnet writes is first written to a temporary file in the target's
directory (same filesystem, so the rename is atomic), created exclusively
(``O_CREAT|O_EXCL|O_NOFOLLOW`` under a random name, so a file or a symlink
planted there is never written through), flushed to disk, renamed over the
target, and the directory is flushed too so the rename survives a power cut.

Modes: the temporary is created with ``os.open(..., 0o666)`` and the kernel
applies the umask, so a published file is ``0o666 & ~umask`` (0644 under the
usual 022) — never the owner-only 0600 of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from effnet_cli.output.faults import OutputFile, shown_target, write_error, writing

__all__ = ["FILE_MODE", "DIR_MODE", "create_exclusive", "open_partial", "temp_path", "atomic_file", "write_bytes",
           "write_text", "publish_file", "fsync_dir", "fsync_file", "make_dir", "temp_dir", "publish_dir",
           "remove_own", "remove_written"]

FILE_MODE = 0o666  # the kernel removes the umask's bits
DIR_MODE = 0o777
_EXCL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_SUFFIX = ".part"
_PREFIX_BYTES = 96  # temporary names stay far below NAME_MAX whatever the target's name


def create_exclusive(path: str | os.PathLike[str], *, binary: bool = True,
                     shown: str | os.PathLike[str] | None = None) -> IO[Any]:
    """Create ``path``, which must not exist (not even as a symlink), and open it for writing.

    A failed write through the file object names ``shown`` (by default the final name of our
    partial file ``path``; see :func:`~effnet_cli.output.faults.shown_target`). A file already
    there stays a :class:`FileExistsError`.
    """
    shown = shown_target(path) if shown is None else shown
    try:
        fd = os.open(path, _EXCL_FLAGS, FILE_MODE)
    except FileExistsError:
        raise
    except OSError as exc:
        raise write_error(exc, shown) from exc
    fh = io.BufferedWriter(OutputFile(fd, shown))
    return fh if binary else io.TextIOWrapper(fh, encoding="utf-8", newline="")


def open_partial(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open an existing partial file of ours for reading and writing, never through a symlink."""
    shown = shown_target(path)
    with writing(shown):
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    return io.BufferedRandom(OutputFile(fd, shown, readable=True))


def temp_prefix(target: Path) -> str:
    """The start of every temporary name for ``target``: ``.{name}.`` with the name cut to a safe length."""
    raw = os.fsencode(target.name)[:_PREFIX_BYTES]
    return "." + os.fsdecode(raw) + "."


def temp_path(target: Path) -> Path:
    """A fresh random temporary name beside ``target`` (not created)."""
    return target.with_name(f"{temp_prefix(target)}{secrets.token_hex(6)}{_TEMP_SUFFIX}")


def temporaries_of(directory: Path, targets: Iterable[Path]) -> list[Path]:
    """The temporaries in ``directory`` that a killed write of one of ``targets`` left behind.

    Only names this layer makes (:func:`temp_path`: ``temp_prefix(target)`` + random + ``.part``)
    match, so a caller holding the output's lock can remove them without touching anyone else's file.
    """
    prefixes = tuple({temp_prefix(Path(t)) for t in targets})
    return [Path(entry.path) for entry in os.scandir(directory)
            if entry.name.endswith(_TEMP_SUFFIX) and entry.name.startswith(prefixes)]


def _create_temp(target: Path) -> tuple[Path, IO[bytes]]:
    for _ in range(100):
        path = temp_path(target)
        try:
            return path, create_exclusive(path, shown=shown_target(target))
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or a new file) to disk."""
    with writing(directory):
        _fsync_dir(directory)


def _fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(fh: IO[Any]) -> None:
    """Push a file object of this layer to the OS and to disk; a failure names the file's output."""
    with writing(getattr(fh, "name", "output")):
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``target``: readers see the old file or the new one, never half."""
    with writing(target):
        _fsync_path(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str], *, text: bool = False) -> Iterator[IO[Any]]:
    """``with atomic_file(path) as fh:`` — write ``fh``; on success ``path`` appears whole, on error not at all."""
    target = Path(target)
    tmp, fh = _create_temp(target)
    shown = shown_target(target)  # a partial marker's failure names the output it belongs to
    try:
        if text:
            tf = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            try:
                yield tf
                tf.flush()
            finally:
                with contextlib.suppress(OSError, ValueError):  # after a failed write: the error is on its way
                    tf.detach()
        else:
            yield fh
        with writing(shown):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        if not fh.closed:
            with contextlib.suppress(OSError):  # bytes a failed write left in the buffer fail again
                fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Publish ``data`` as ``target`` atomically."""
    with atomic_file(target) as fh:
        fh.write(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Publish UTF-8 ``text`` as ``target`` atomically."""
    write_bytes(target, text.encode("utf-8"))


def make_dir(directory: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` with the umask's mode (0755 under 022)."""
    directory = Path(directory)
    with writing(directory):
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return directory


def temp_dir(final: Path) -> Path:
    """A new, empty, hidden directory beside ``final`` with the umask's mode (unlike mkdtemp's 0700)."""
    make_dir(final.parent)
    for _ in range(100):
        path = final.with_name(f"{temp_prefix(final)}{secrets.token_hex(6)}.tmp")
        try:
            os.mkdir(path, DIR_MODE)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(exc, final) from exc
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(final))


def publish_dir(tmp: Path, final: Path, *, replace_own: tuple[str, ...] | None = None) -> bool:
    """Rename a finished directory ``tmp`` to ``final``; True when ours is the one in place.

    ``final`` may be missing or empty. With ``replace_own`` (the names effnet
    writes there), a ``final`` holding nothing but such names is replaced: it
    is moved aside first, so readers never see a mix, then removed. A
    directory holding anything else is never touched (the caller refuses
    before getting here; a race with another writer returns False).
    """
    with writing(final):
        return _publish_dir(tmp, final, replace_own)


def _publish_dir(tmp: Path, final: Path, replace_own: tuple[str, ...] | None) -> bool:
    for fsync_target in tmp.iterdir():
        if fsync_target.is_file():
            _fsync_path(fsync_target)
    _fsync_dir(tmp)
    old = None
    if final.is_dir() and not final.is_symlink():
        names = {p.name for p in final.iterdir()}
        if names:
            if replace_own is None or not names <= set(replace_own):
                return False
            old = temp_dir(final)
            os.rmdir(old)
            os.replace(final, old)
        else:
            with contextlib.suppress(OSError):
                final.rmdir()
    try:
        os.replace(tmp, final)
    except OSError:
        if old is not None:
            os.replace(old, final)  # put the user's copy back as it was
            old = None
        if final.is_dir() and any(final.iterdir()):
            return False  # another process published a complete directory first
        raise
    finally:
        if old is not None:
            remove_own(old, replace_own or ())
    _fsync_dir(final.parent)
    return True


def remove_written(directory: Path, files: Iterable[Path], *, keep_directory: bool) -> None:
    """Take back a failed run's files under ``directory``: ``files`` (this run wrote them), then the
    folders between them and ``directory`` left empty, then ``directory`` itself unless ``keep_directory``.

    So a run that could not finish leaves the directory as it found it and can simply be run again.
    """
    folders: set[Path] = set()
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        folders.update(p for p in Path(path).parents if directory in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: something else lives there
            folder.rmdir()
    if not keep_directory:
        with contextlib.suppress(OSError):
            directory.rmdir()


def remove_own(directory: Path, names: tuple[str, ...] | frozenset[str] | set[str]) -> None:
    """Remove a directory of ours: its files named in ``names`` (and temporaries), then the directory if empty.

    Anything else found in it is left where it is: effnet never deletes a
    file it did not write.
    """
    if not directory.is_dir() or directory.is_symlink():
        return
    for entry in list(directory.iterdir()):
        ours = entry.name in names or (entry.name.startswith(".") and entry.name.endswith((_TEMP_SUFFIX, ".tmp")))
        if not ours:
            continue
        if entry.is_dir() and not entry.is_symlink():
            remove_own(entry, names)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


