"""A report page: cards (a thumbnail, a title, score bars, a note) in sections, rendered from one template.

The page is one self-contained file: thumbnails and figures are ``data:`` URIs, the styles and the
script are inline, and nothing refers to the network. Thumbnails are at most :data:`THUMB_SIDE`
pixels on their longer side and JPEG-compressed, so each card costs a few kilobytes however large its
photo; the script sets an image's source only when its card scrolls into view, and cards off screen
are not laid out (CSS ``content-visibility``), so 10,000 cards open as quickly as 10.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from effnet_cli.data.limits import DEFAULT_DECODE_TIMEOUT, TimeLimitExceeded, call_with_time_limit
from effnet_cli.errors import DecodeError, InputError
from effnet_cli.output import write_text

THUMB_SIDE = 128  # pixels on the longer side: the size of a card's picture
THUMB_QUALITY = 70  # JPEG quality: 2.6-6.6 kB a thumbnail as a data URI on the sample photos
TEMPLATE = "report.html.j2"
if TYPE_CHECKING:
    from PIL import Image

INSTALL_HINT = "--report needs Jinja2: pip install 'effnet-cli[report]' (or pip install jinja2)."


@dataclass
class Bar:
    """One score bar: a label and its score in [0, 1]."""

    label: str
    score: float


@dataclass
class Card:
    """One input on the page."""

    title: str  # the input's path, as text
    thumb: str | None = None  # a data: URI, or None (unreadable input)
    bars: list[Bar] = field(default_factory=list)
    note: str | None = None  # an error, or what the card is about ("true: cat, predicted: dog")
    flags: tuple[str, ...] = ()  # CSS classes: "failed", "low", "kept", …
    key: str = ""  # the value the label filter matches


@dataclass
class Section:
    """A heading with figures (PNG data URIs), cards, or groups of cards shown side by side."""

    heading: str
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, data URI)
    cards: list[Card] = field(default_factory=list)
    groups: list[list[Card]] = field(default_factory=list)
    text: str | None = None


@dataclass
class Page:
    """The whole page: a title, summary lines, sections, and the labels the filter offers."""

    title: str
    summary: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    filter_keys: list[str] = field(default_factory=list)


def require_jinja() -> None:
    """Refuse at once, with the install line, when Jinja2 is missing (found without importing it)."""
    import importlib.util

    if importlib.util.find_spec("jinja2") is None:
        raise InputError(INSTALL_HINT)


def check_page(path: Path | None, *, overwrite: bool | None = None) -> Path | None:
    """``--report``'s target, refused before any work: it exists (without ``--overwrite``), or Jinja2 is missing."""
    if path is None:
        return None
    from effnet_cli.output.targets import check_file

    require_jinja()
    check_file(path, "--report", overwrite=overwrite)
    return path


def image_uri(data: bytes, mime: str = "image/png") -> str:
    """``data`` as a ``data:`` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(path: str, max_pixels: int | None = None,
              time_limit: float | None = DEFAULT_DECODE_TIMEOUT) -> str | None:
    """A JPEG thumbnail of the image at ``path`` as a data URI; None when it cannot be decoded.

    ``max_pixels`` None is the decoder's default limit (decompression bombs are refused here too).
    ``time_limit``: seconds the read and decode may take (``--decode-timeout``; None: no limit), so that
    a file that hangs on this second read costs its thumbnail, not the page.
    """
    from effnet_cli.data.decode import open_image, option_pixel_limit

    try:
        # draft: a JPEG decodes straight at 1/2…1/8 scale, several times faster for camera photos
        image = call_with_time_limit(time_limit, partial(open_image, path, max_pixels=option_pixel_limit(max_pixels),
                                                         draft_size=(THUMB_SIDE, THUMB_SIDE)))
    except (DecodeError, TimeLimitExceeded):
        return None
    return thumbnail_of(image)


def thumbnail_of(image: Image.Image) -> str:
    """A JPEG thumbnail of a decoded PIL image as a data URI."""
    from PIL import Image as PILImage

    small = image.convert("RGB")
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), PILImage.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=THUMB_QUALITY)
    return image_uri(buffer.getvalue(), "image/jpeg")


def render(page: Page) -> str:
    """The page's HTML, from the template (every value escaped)."""
    import jinja2

    text = resources.files("effnet_cli.resources").joinpath(TEMPLATE).read_text("utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(text).render(page=page)


def write_page(target: str | os.PathLike[str], page: Page) -> Path:
    """Render ``page`` and publish it at ``target`` whole (temporary, fsync, rename)."""
    write_text(target, render(page))
    return Path(target)
