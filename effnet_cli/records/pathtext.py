"""Paths as text: the one rule every record, manifest and table follows.

A file name on Linux is a string of bytes; Python hands it to us as ``str``
decoded from UTF-8 with ``surrogateescape``, so a byte that is not UTF-8
(``caf\\xe9.jpg``) becomes a lone surrogate (``caf\\udce9.jpg``) that no UTF-8
encoder accepts. effnet writes such a path in two fields:

- ``path``: always valid UTF-8. A name whose bytes are valid UTF-8 appears as
  itself, exactly. Otherwise each byte that is not UTF-8 is shown as U+FFFD
  (�), which is readable but lossy.
- ``path_bytes``: only for names whose bytes are not valid UTF-8: the raw
  bytes of the name, base64 (RFC 4648 standard alphabet, padded). Together
  with ``path`` it makes the record lossless.

:func:`path_from_fields` turns a record back into the ``str`` that
:func:`open` and :mod:`os` accept; ``base64.b64decode(record["path_bytes"])``
gives the bytes to any other program. Records are separated by ``\\n`` only:
readers must not use :meth:`str.splitlines`, which also splits on U+2028,
U+0085 and other characters that are legal in a file name.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["PATH_BYTES_FIELD", "is_utf8", "display_path", "path_fields", "path_from_fields", "split_records"]

PATH_BYTES_FIELD = "path_bytes"


def _raw(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(os.fspath(path))


def is_utf8(path: str | os.PathLike[str]) -> bool:
    """True when the name's bytes are valid UTF-8, so ``path`` alone represents it exactly."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_path(path: str | os.PathLike[str]) -> str:
    """The name as valid UTF-8 text: itself when it is UTF-8, bytes that are not shown as U+FFFD."""
    text = os.fspath(path)
    if is_utf8(text):
        return text
    try:
        return _raw(text).decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to: show it as U+FFFD too
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def path_fields(path: str | os.PathLike[str]) -> dict[str, str]:
    """The record fields for one path: ``{"path": …}``, plus ``path_bytes`` when the name is not UTF-8."""
    text = os.fspath(path)
    if is_utf8(text):
        return {"path": text}
    return {"path": display_path(text), PATH_BYTES_FIELD: base64.b64encode(_raw(text)).decode("ascii")}


def path_from_fields(record: Mapping[str, Any]) -> str:
    """The path a record names, as the ``str`` that :func:`open` accepts (inverse of :func:`path_fields`)."""
    raw = record.get(PATH_BYTES_FIELD)
    if raw:
        return os.fsdecode(base64.b64decode(raw, validate=True))
    return record["path"]


def split_records(text: str) -> list[str]:
    """Split newline-delimited records on ``\\n`` only (never on U+2028 and friends); no empty tail."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
