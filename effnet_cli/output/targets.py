"""What an output option may name, decided from the arguments alone, before anything loads.

One rule for every file or directory effnet writes (``classify -o``, ``embed -o``, ``--per-file``,
``--output-dir``, ``convert -o``, ``export -o``, ``finetune -o``):

- a new path, or an empty directory, is written;
- an existing file, or a directory that holds anything, is refused with one line
  (:class:`~effnet_cli.errors.InputError`, exit status 2) that names ``--overwrite`` and
  ``--resume`` where the command has them;
- ``--overwrite`` replaces only what effnet wrote itself: a directory is replaced only when
  every entry in it is one of effnet's own (``own``), recognised by name or marker;
- a directory that cannot be written (read-only file system, no permission) is refused
  with "cannot write PATH: read-only file system" (exit status 2);
- a file option that needs a suffix gets it added (``-o feats`` writes ``feats.npy``), and
  the caller says so in one line.

Nothing here imports more than the standard library, so these checks cost nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from effnet_cli.errors import InputError
from effnet_cli.output.faults import check_writable
from effnet_cli.records.pathtext import display_path

__all__ = ["add_suffix", "check_dir", "check_file", "remedy"]


def remedy(overwrite: bool | None, resume: bool | None) -> str:
    """The flags that would let the command go on: ``add --overwrite to replace it, or --resume to continue it``.

    ``None`` means the command has no such flag.
    """
    ways = []
    if overwrite is not None:
        ways.append("add --overwrite to replace it")
    if resume is not None:
        ways.append(("or " if ways else "add ") + "--resume to continue it")
    return ", ".join(ways)


def add_suffix(path: Path, suffixes: Sequence[str], default: str) -> Path:
    """``path`` when it ends in one of ``suffixes`` (any case), else ``path`` + ``default``."""
    if path.suffix.lower() in suffixes:
        return path
    return path.with_name(path.name + default)


def check_file(path: Path, option: str, *, overwrite: bool | None = None, resume: bool | None = None,
               companions: Sequence[Path] = ()) -> None:
    """Refuse ``path`` (and the files written beside it, ``companions``) when they exist and neither
    ``--overwrite`` nor ``--resume`` was given; refuse a directory, or a file in the place of its parent, in any case."""
    if path.is_dir():
        raise InputError(f"{display_path(path)} is a directory; {option} names a file.")
    parent = path.parent  # created when missing; a file in its place is refused
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{display_path(parent)} is not a directory; choose another {option}.")
    check_writable(path)
    if overwrite or resume:
        return
    for existing in (path, *companions):
        if os.path.lexists(existing):
            how = remedy(overwrite, resume)
            raise InputError(f"{display_path(existing)} already exists; "
                             + (f"{how}." if how else f"choose another {option}."))


def check_dir(path: Path, option: str, *, overwrite: bool | None = None, resume: bool | None = None,
              own: Callable[[str], bool] | None = None) -> None:
    """Refuse ``path`` when it is a file, or a directory that holds anything and neither ``--overwrite``
    nor ``--resume`` was given; with ``--overwrite``, also one that holds a name ``own`` does not accept."""
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"{display_path(path)} exists and is not a directory; choose another {option}.")
    check_writable(path, is_dir=True)  # the directory itself when it exists, else where it would be made
    if not path.is_dir():
        return
    entries = sorted(os.listdir(path))
    if not entries or resume:
        return
    if not overwrite:
        how = remedy(overwrite, resume)
        raise InputError(f"{display_path(path)} already exists and is not empty; "
                         + (f"{how}." if how else f"choose another {option}."))
    foreign = [name for name in entries if own is None or not own(name)]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{display_path(path)} holds files effnet did not write ({display_path(foreign[0])}{more}); "
                         f"--overwrite only replaces effnet's own: move them away or choose another {option}.")
