"""File names a careful user's photo folder can really hold, and that every output must survive.

Each is a legal Linux file name: the corpus is made with byte names so that a
name that is not UTF-8 exists exactly as the filesystem stores it.
"""

from __future__ import annotations

import os
from pathlib import Path

# NAME_MAX is 255 bytes on every common Linux filesystem; leave room for ".jpg".
_LONG = "l" * (255 - len(".jpg"))

HOSTILE_NAMES: dict[str, bytes] = {
    "newline": b"new\nline.jpg",
    "carriage_return": b"carriage\rreturn.jpg",
    "tab": b"tab\there.jpg",
    "comma": b"comma,here.jpg",
    "double_quote": b'double"quote.jpg',
    "line_separator": "line\u2028separator.jpg".encode(),
    "markup": b"photo [edited].jpg",
    "closing_tag": b"markup [/x] [bold]end.jpg",
    "leading_space": b" leading space.jpg",
    "non_ascii": "café 日本 ñ.jpg".encode(),
    "not_utf8": b"caf\xe9 latin1.jpg",
    "near_name_max": _LONG.encode() + b".jpg",
}


def make_hostile_corpus(directory: Path, image: bytes) -> list[str]:
    """Write ``image`` under every hostile name in ``directory``; return the paths as ``str`` (fsdecoded)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for raw in HOSTILE_NAMES.values():
        target = os.path.join(os.fsencode(directory), raw)
        # "[/x]" holds a slash, which no file name can: that path runs through a folder "markup [".
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(image)
        paths.append(os.fsdecode(target))
    return paths
