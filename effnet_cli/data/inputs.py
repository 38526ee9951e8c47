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
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

from effnet_cli.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "discover_inputs"]

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


def _split_stdin(
    stdin_lines: Iterable[str | bytes] | None,
    stdin: IO[bytes] | IO[str] | None,
    null_separated: bool,
) -> list[str]:
    """Paths listed on stdin: one per line, or NUL-separated as ``find -print0`` writes.

    Raw stdin is read as bytes and decoded with :func:`os.fsdecode`, so names
    that are not valid UTF-8 survive the round trip back to the file system.
    """
    if stdin_lines is None:
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", sys.stdin)
        data = stream.read()
        stdin_lines = [data]
        chunks_are_raw = True
    else:
        chunks_are_raw = False
    names: list[str] = []
    for chunk in stdin_lines:
        text = os.fsdecode(chunk) if isinstance(chunk, bytes) else chunk
        if null_separated:
            pieces = text.split("\0")
        elif chunks_are_raw:
            pieces = text.split("\n")
        else:
            pieces = [text[:-1] if text.endswith("\n") else text]
        for piece in pieces:
            if not null_separated and piece.endswith("\r"):
                piece = piece[:-1]  # text piped from Windows tools
            if piece:
                names.append(piece)
    return names


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
    inputs = _Collected()
    stdin_names: list[str] | None = None
    for raw in args:
        arg = os.fspath(raw)
        if arg == "-":
            if stdin_names is None:  # stdin can only be read once
                stdin_names = _split_stdin(stdin_lines, stdin, null_separated)
                for name in stdin_names:
                    inputs.add_existing_or_missing(name)
            continue
        if os.path.lexists(arg) or not _GLOB_MAGIC.search(arg):
            inputs.add_existing_or_missing(arg)
            continue
        matches = glob.glob(arg, recursive=True)
        if not matches:
            # As the shell does with an unmatched glob: pass it on literally,
            # so the user sees "no such file" for exactly what they typed.
            inputs.add(arg)
            continue
        for match in sorted(matches, key=_path_key):
            inputs.add_existing_or_missing(match)

    if not inputs.found:
        if not args:
            detail = "give image files, directories or globs, or - to read paths from stdin"
        elif inputs.walked:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            detail = f"no files ending in {exts} under {', '.join(inputs.walked)}"
        else:
            detail = "stdin listed no paths"
        raise InputError(f"no input images: {detail}")
    return inputs.found


class _Collected:
    """The inputs found so far, each file once (by real path), in the order they were first named."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.seen: set[str] = set()  # real paths of the inputs in found
        self.visited_dirs: set[tuple[int, int]] = set()  # (device, inode): a directory linked twice is walked once
        self.walked: list[str] = []  # directories walked, for the error message when nothing is found

    def add(self, path: str) -> None:
        key = os.path.realpath(path)
        if key not in self.seen:
            self.seen.add(key)
            self.found.append(path)

    def add_existing_or_missing(self, path: str) -> None:
        """A directory's images, or the path itself (a file, or a missing one that will get its error record)."""
        if os.path.isdir(path):
            self.walked.append(path)
            for image in _walk_images(path, self.visited_dirs):
                self.add(image)
        else:
            self.add(path)
