"""Input discovery: command-line arguments (files, directories, globs, ``-``) to paths.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers
    ^^^^^^
    this module

:func:`discover_inputs` turns command-line arguments (files, directories,
globs, ``-`` for stdin) into an ordered, de-duplicated list of paths. A path
that does not exist stays in the list, so it gets its own error record later.
Nothing here opens an image.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

from effnet_cli.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "discover_inputs", "iter_inputs"]

# Extensions picked up when a directory is walked (compared case-insensitively).
# Files named explicitly are always taken, whatever their extension.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
)

_GLOB_MAGIC = re.compile(r"[*?[]")
_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that puts ``img2`` before ``img10`` and ignores case first."""
    parts = _DIGITS.split(name)
    # Even positions are text, odd positions are digit runs, so the tuples of
    # any two names compare position by position without mixing str and int.
    key = [int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)]
    return (key, name)  # the raw name breaks ties, so the order is total and stable


def _path_key(path: str) -> list[tuple[Any, ...]]:
    """Natural key per path component, so glob results sort like a directory walk."""
    return [_natural_key(part) for part in path.split(os.sep)]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(root: str, visited: set[tuple[int, int]]) -> Iterator[str]:
    """Yield image files under ``root`` depth-first, in natural order per directory.

    Directory symlinks are followed (people link photo folders together), and
    ``visited`` holds the (device, inode) of every directory entered, so a link
    back to an ancestor or a second route to the same folder is entered once.
    Hidden entries (names starting with ".") are skipped: they are thumbnails,
    AppleDouble ``._x.jpg`` files and VCS folders, not photos. A directory that
    cannot be listed is yielded itself, so it gets an error record instead of
    vanishing; so is every other entry named like an image, whatever it is (a
    FIFO, socket or device gets "not a regular file" from the decoder, which
    never opens it, as for a path named directly).
    """
    # An explicit stack of iterators instead of recursion: deep trees must not
    # hit Python's recursion limit.
    stack: list[Iterator[os.DirEntry[str]]] = []
    parents: list[str] = []

    def enter(path: str) -> str | None:
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in visited:
                return None
            visited.add(key)
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: _natural_key(e.name))
        except OSError:
            return path  # unreadable: surface it as an input with an error
        stack.append(iter(entries))
        parents.append(path)
        return None

    unreadable = enter(root)
    if unreadable is not None:
        yield unreadable
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            parents.pop()
            continue
        if entry.name.startswith("."):
            continue
        child = os.path.join(parents[-1], entry.name)
        try:
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            unreadable = enter(child)
            if unreadable is not None:
                yield unreadable
        elif _is_image_name(entry.name):
            # Not only regular files: a dangling symlink ("no such file") or a
            # FIFO named like an image must be reported, not silently skipped.
            yield child


def _stdin_names(
    stdin_lines: Iterable[str | bytes] | None,
    stdin: IO[bytes] | IO[str] | None,
    null_separated: bool,
) -> Iterator[str]:
    """Paths listed on stdin, one per line or NUL-separated as ``find -print0`` writes, as they arrive.

    Raw stdin is read in blocks of what is there (never the whole stream first), split
    on the separator as bytes, and each name decoded with :func:`os.fsdecode`, so names
    that are not valid UTF-8 survive the round trip back to the file system.
    """
    if stdin_lines is not None:
        for chunk in stdin_lines:
            text = os.fsdecode(chunk) if isinstance(chunk, bytes) else chunk
            if null_separated:
                yield from (piece for piece in text.split("\0") if piece)
            else:
                yield from _line_names([text[:-1] if text.endswith("\n") else text])
        return
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", sys.stdin)
    names = _split_blocks(_blocks(stream), "\0" if null_separated else "\n")
    yield from names if null_separated else _line_names(names)


# Bytes asked of stdin at a time (a read returns what is there, up to this).
_BLOCK = 1 << 16


def _blocks(stream: IO[bytes] | IO[str]) -> Iterator[bytes | str]:
    """What ``stream`` holds, in blocks as they arrive: ``read1`` returns as soon as anything is there,
    where ``read(n)`` would wait for ``n`` bytes (a pipeline's first paths would wait for the rest)."""
    read = getattr(stream, "read1", None) or stream.read
    while True:
        block = read(_BLOCK)
        if not block:
            return
        yield block


def _split_blocks(blocks: Iterable[bytes | str], separator: str) -> Iterator[str]:
    """The non-empty pieces between separators across ``blocks``; a piece cut by a block boundary is joined."""
    rest: bytes | str = b""
    for block in blocks:
        sep: bytes | str = separator.encode() if isinstance(block, bytes) else separator
        if isinstance(block, str) and isinstance(rest, bytes):
            rest = os.fsdecode(rest)
        pieces = (rest + block).split(sep)  # type: ignore[operator]
        rest = pieces.pop()
        for piece in pieces:
            if piece:
                yield os.fsdecode(piece)
    if rest:
        yield os.fsdecode(rest)


def _line_names(lines: Iterable[str]) -> Iterator[str]:
    """Names from lines: a trailing carriage return (text piped from Windows tools) dropped, empty lines skipped."""
    for piece in lines:
        if piece.endswith("\r"):
            piece = piece[:-1]
        if piece:
            yield piece


def discover_inputs(
    args: Sequence[str | os.PathLike[str]],
    *,
    stdin_lines: Iterable[str | bytes] | None = None,
    null_separated: bool = False,
    stdin: IO[bytes] | IO[str] | None = None,
) -> list[str]:
    """Turn command-line arguments into the ordered list of images to process.

    Each argument is, in this order of preference:

    * ``-``: paths read from stdin (``stdin_lines`` if given, else ``stdin``,
      else the process's stdin), one per line, or NUL-separated when
      ``null_separated`` (``find -print0``). Each is taken as a file or a
      directory; stdin paths are never glob-expanded, since they come from a
      program rather than a shell.
    * an existing directory: walked recursively for files with an image
      extension (:data:`IMAGE_EXTENSIONS`, any case), natural order per directory.
    * an existing file: taken whatever its extension.
    * a glob (``*.jpg``, ``photos/**/*.png``) when no file has that literal
      name: expanded (``**`` recurses) in natural order; directories it
      matches are walked as above.
    * anything else, e.g. a missing file: kept, so it gets its own
      "no such file" record instead of disappearing.

    The result keeps argument order, each argument expanded in sorted order,
    and lists every image once: later paths that resolve to a file already
    listed are dropped. Paths are returned as typed (joined onto the directory
    or glob that produced them), not resolved, so outputs show what the user
    typed.

    Raises :class:`InputError` when nothing at all is left to process.
    """
    return list(iter_inputs(args, stdin_lines=stdin_lines, null_separated=null_separated, stdin=stdin))


def iter_inputs(
    args: Sequence[str | os.PathLike[str]],
    *,
    stdin_lines: Iterable[str | bytes] | None = None,
    null_separated: bool = False,
    stdin: IO[bytes] | IO[str] | None = None,
) -> Iterator[str]:
    """The paths of :func:`discover_inputs`, one at a time, as they are found.

    Stdin is read as it arrives and directories are walked as the paths are taken, so a
    consumer can start on the first paths before a pipeline has written the last, and need
    not hold the list. What stays in memory: a 16-byte key per path yielded (to drop
    duplicates, :class:`_Seen`) and the entries of the directory being listed.
    Raises :class:`InputError` at the end when nothing at all was found.
    """
    inputs = _Collected()
    stdin_read = False
    for raw in args:
        arg = os.fspath(raw)
        if arg == "-":
            if not stdin_read:  # stdin can only be read once
                stdin_read = True
                for name in _stdin_names(stdin_lines, stdin, null_separated):
                    yield from inputs.existing_or_missing(name)
            continue
        if os.path.lexists(arg) or not _GLOB_MAGIC.search(arg):
            yield from inputs.existing_or_missing(arg)
            continue
        matches = glob.glob(arg, recursive=True)
        if not matches:
            # As the shell does with an unmatched glob: pass it on literally,
            # so the user sees "no such file" for exactly what they typed.
            if inputs.add(arg):
                yield arg
            continue
        for match in sorted(matches, key=_path_key):
            yield from inputs.existing_or_missing(match)

    if not inputs.count:
        if not args:
            detail = "give image files, directories or globs, or - to read paths from stdin"
        elif inputs.walked:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            detail = f"no files ending in {exts} under {', '.join(inputs.walked)}"
        else:
            detail = "stdin listed no paths"
        raise InputError(f"no input images: {detail}")


# Folders whose real path one discovery remembers (it starts over when there are more).
_FOLDERS = 4096
# Keys kept in a set before they move into the sorted array of _Seen.
_SPILL = 1 << 14


class _Seen:
    """The keys (:func:`_identity`) of the inputs taken so far, in 16 bytes each where a set takes about 100.

    The newest keys are in a set; every ``_SPILL`` of them move into one sorted numpy array, searched by
    bisection. A million inputs cost 16 MB (32 MB while a move copies the array), not 100 MB, and a
    short run never imports numpy.
    """

    def __init__(self) -> None:
        self.recent: set[bytes] = set()
        self.spilled: Any = None  # numpy array of dtype S16, sorted

    def add(self, key: bytes) -> bool:
        """Take ``key`` in; False when it was there already."""
        if key in self.recent or self._spilled_has(key):
            return False
        self.recent.add(key)
        if len(self.recent) >= _SPILL:
            self._spill()
        return True

    def _spilled_has(self, key: bytes) -> bool:
        if self.spilled is None:
            return False
        i = int(self.spilled.searchsorted(key))
        # numpy drops trailing NUL bytes of an S16 item when it hands it out: put them back before comparing.
        return i < len(self.spilled) and self.spilled[i].ljust(16, b"\0") == key

    def _spill(self) -> None:
        import numpy as np

        moved = np.array(list(self.recent), dtype="S16")
        self.spilled = np.sort(moved if self.spilled is None else np.concatenate([self.spilled, moved]))
        self.recent = set()


class _Collected:
    """The inputs found so far, each file once (by real path), in the order they were first named."""

    def __init__(self) -> None:
        self.count = 0  # inputs yielded
        self.seen = _Seen()  # keys (_identity) of the inputs yielded
        self.visited_dirs: set[tuple[int, int]] = set()  # (device, inode): a directory linked twice is walked once
        self.walked: list[str] = []  # directories walked, for the error message when nothing is found
        self.folders: dict[str, str] = {}  # folder as named -> its real path (_real_path), for this discovery

    def add(self, path: str) -> bool:
        """Count ``path`` in; False when it names a file already taken."""
        if not self.seen.add(self._identity(path)):
            return False
        self.count += 1
        return True

    def _identity(self, path: str) -> bytes:
        """The key that makes two paths one input: a digest of the real path (16 bytes, where the path
        itself is often over 100), so the keys of a long run stay small."""
        return hashlib.blake2b(os.fsencode(self._real_path(path)), digest_size=16).digest()

    def _real_path(self, path: str) -> str:
        """``os.path.realpath(path)``, its folder's part remembered: a long list names the same folders
        over and over, and resolving every component of every path again cost ~30 µs a path."""
        folder, name = os.path.split(path)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        real_folder = self.folders.get(folder)
        if real_folder is None:
            if len(self.folders) >= _FOLDERS:
                self.folders.clear()
            real_folder = self.folders[folder] = os.path.realpath(folder or ".")
        real = os.path.join(real_folder, name)
        return os.path.realpath(real) if os.path.islink(real) else real

    def existing_or_missing(self, path: str) -> Iterator[str]:
        """A directory's images, or the path itself (a file, or a missing one that will get its error record)."""
        if os.path.isdir(path):
            self.walked.append(path)
            for image in _walk_images(path, self.visited_dirs):
                if self.add(image):
                    yield image
        elif self.add(path):
            yield path
