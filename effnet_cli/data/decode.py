"""Safe decoding: one image file to an RGB picture, or a short reason why not.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers
              ^^^^^^
              this module

:func:`open_image` decodes one file into an RGB :class:`PIL.Image.Image`, or
raises :class:`~effnet_cli.errors.DecodeError` with a short reason a user
understands ("truncated JPEG", "empty file", ...).
"""

from __future__ import annotations

import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from effnet_cli.errors import DecodeError, one_line

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_BACKGROUND", "open_image", "option_pixel_limit", "special_file_reason"]

# Pillow's own default (1024 * 1024 * 1024 // 4 // 3), written out so that code
# elsewhere changing Image.MAX_IMAGE_PIXELS does not silently change our limit.
DEFAULT_MAX_PIXELS = 89_478_485


def option_pixel_limit(given: int | None) -> int:
    """``--max-pixels`` as a command got it (None: not given) -> the limit ``open_image`` takes."""
    return DEFAULT_MAX_PIXELS if given is None else given

# Transparent pixels are composited on white: what a browser or photo viewer
# shows for a transparent PNG on a plain page.
DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

_MAX_DETAIL = 120  # longest library message quoted inside a reason

# Serialises the rare moments when we must flip one of Pillow's module globals
# (see _pil_global); plain decoding never takes it.
_PIL_GLOBALS_LOCK = threading.RLock()


@contextmanager
def _pil_global(module: Any, name: str, value: Any) -> Iterator[None]:
    """Give one of Pillow's module-level settings ``value`` for the ``with`` body only.

    Pillow reads ``ImageFile.LOAD_TRUNCATED_IMAGES`` and ``Image.MAX_IMAGE_PIXELS``
    as module globals, so there is no per-call switch. When the global already
    has the value we need (the usual case) nothing is touched; otherwise it is
    swapped under a lock and restored, so other code keeps its own setting.
    Threads of other code decoding during that short window see our value.
    """
    if getattr(module, name) == value:
        yield
        return
    with _PIL_GLOBALS_LOCK:
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            yield
        finally:
            setattr(module, name, saved)


# JPEGs are decoded at reduced size (PIL's draft: the DCT scales by 1/2, 1/4 or 1/8) only down to this
# multiple of the resize target. Decoding right down to the target lets the DCT's crude scaling replace
# the resize's filter, which flipped close top-1 calls on the sample photos; with 1.5× the resize still
# does the last step (tests/test_optimize.py; the agreement with full decoding: docs/benchmarks.md).
DRAFT_MARGIN = 1.5


def draft_options(size: dict[str, int], margin: float | None = None) -> dict[str, Any]:
    """``open_image``'s ``draft_size`` for a processor's resize ``size`` (height/width or shortest_edge)."""
    margin = DRAFT_MARGIN if margin is None else margin
    if "height" in size:
        return {"draft_size": (round(margin * size["width"]), round(margin * size["height"]))}
    if "shortest_edge" in size:
        return {"draft_size": (round(margin * size["shortest_edge"]),) * 2}
    return {}


def _short(exc: BaseException) -> str:
    """A library's exception message on one line, short enough to quote."""
    return one_line(exc, limit=_MAX_DETAIL)


def _sniff_non_image(head: bytes) -> str:
    """Name what a file Pillow cannot identify probably is, for the error reason."""
    lower = head[:512].lstrip().lower()
    if head.startswith(b"%PDF"):
        return "not an image (PDF document)"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "unsupported image format (HEIC/HEIF)"
        if brand in (b"avif", b"avis"):
            return "unsupported image format (AVIF)"
        return "not an image (video or other ISO media file)"
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!")):
        return "not an image (archive)"
    if b"<svg" in lower:
        return "unsupported image format (SVG)"
    if lower.startswith((b"<!doctype html", b"<html")) or b"<html" in lower:
        # Typically a download that saved an error page under the image's name.
        return "not an image (HTML page)"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return "not an image (text file)"
        except UnicodeDecodeError as exc:
            if exc.start >= len(head) - 3:  # a character cut by the 1 KiB window
                return "not an image (text file)"
    return "not an image (unrecognised format)"


def _signature_format(head: bytes) -> str | None:
    """The image format the first bytes announce, if any (Pillow's format names)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"GIF8"):
        return "GIF"
    if head.startswith((b"II*\0", b"MM\0*")):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and head[6:10] == b"\0\0\0\0":  # reserved fields are zero
        return "BMP"
    return None


def _decode_failure(exc: BaseException, fmt: str, head: bytes, size: int) -> str:
    """Reason for an exception Pillow raised while reading a file in format ``fmt``."""
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    message = str(exc)
    # "image file is truncated", "Truncated File Read", ...
    if "truncated" in message.lower():
        return f"truncated {fmt}"
    if fmt == "WEBP" and head[:4] == b"RIFF" and len(head) >= 8:
        # libwebp only says "could not create decoder object"; the RIFF header
        # tells whether the file is simply shorter than it claims.
        declared = int.from_bytes(head[4:8], "little") + 8
        if size < declared:
            return "truncated WEBP"
    if isinstance(exc, UnidentifiedImageError):
        return f"corrupt {fmt} header"
    if "data stream" in message:
        # Pillow's decoder errors ("broken data stream when reading image
        # file", "unrecognized data stream contents ...") say nothing more.
        return f"corrupt {fmt} data"
    if isinstance(exc, (SyntaxError, EOFError)):  # Pillow's "bad file structure"
        return f"corrupt {fmt} ({_short(exc)})"
    return f"cannot decode {fmt} ({_short(exc)})"


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float single-channel image to 8-bit "L".

    Pillow's own ``convert("L")`` clips 16-bit values at 255, which turns a
    16-bit PNG almost white; here the full range maps onto 0..255 instead.
    """
    import numpy as np

    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = (values.astype(np.uint32) * 255 + 32767) // 65535
    else:
        # "I" (32-bit) and "F" carry no declared range: values up to 1.0 are
        # taken as a 0..1 float image, up to 255 as 8-bit, up to 65535 as
        # 16-bit (older Pillow opened 16-bit PNGs as "I"), beyond that the
        # image's own maximum is white.
        work = np.clip(values.astype(np.float64), 0.0, None)
        peak = float(work.max()) if work.size else 0.0
        if img.mode == "F" and peak <= 1.0:
            scale = 255.0
        elif peak <= 255.0:
            scale = 1.0
        elif peak <= 65535.0:
            scale = 255.0 / 65535.0
        else:
            scale = 255.0 / peak
        scaled = np.rint(work * scale)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # 2-D uint8: "L"


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited over ``background``."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _to_8bit(img)
    if img.has_transparency_data:
        # RGBA, LA, PA, and P/L/RGB with a tRNS colour: a plain convert("RGB")
        # would expose whatever colour the transparent pixels happen to store.
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...
    return img


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # broken EXIF: treat as unrotated, the pixels are fine
        return 1


_SPECIAL_KINDS = ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"))


def special_file_reason(mode: int) -> str | None:
    """The error reason for a path whose ``st_mode`` is neither a regular file nor a directory, else None.

    Such a path is never opened: opening a FIFO with no writer blocks forever, a device can read
    without end. This one rule holds for paths named directly and for those met in a directory walk.
    """
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "special file")
    return f"not a regular file ({kind})"


def _io_failure(exc: OSError) -> DecodeError:
    """The short reason for a file that cannot be stat'ed or opened."""
    if isinstance(exc, FileNotFoundError):
        return DecodeError("no such file")
    if isinstance(exc, PermissionError):
        return DecodeError("permission denied")
    if isinstance(exc, NotADirectoryError):
        return DecodeError("no such file (a parent is not a directory)")
    if isinstance(exc, IsADirectoryError):
        return DecodeError("is a directory")
    return DecodeError(f"cannot read file ({exc.strerror or _short(exc)})")


def open_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode one image file into an RGB image, as a photo viewer would show it.

    * the first frame of an animation is used;
    * EXIF orientation is applied (a portrait phone photo comes out portrait);
    * transparency is composited over ``background`` (white by default);
    * 16-bit images are scaled to 8-bit, palette/grey/CMYK converted to RGB.

    ``max_pixels`` refuses images whose header declares more pixels than that
    (decompression bombs) before any pixel memory is allocated; ``None`` means
    no limit. ``draft_size`` lets JPEGs decode at a reduced scale that is still
    at least that (width, height), which is several times faster for large
    camera photos. Truncated files are refused rather than padded with grey,
    whatever ``ImageFile.LOAD_TRUNCATED_IMAGES`` says.

    Raises :class:`DecodeError` with a short reason on every failure; any other
    exception escaping would be a bug.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except OSError as exc:
        raise _io_failure(exc) from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(name, os.R_OK | os.X_OK):
            raise DecodeError("permission denied")
        raise DecodeError("is a directory")
    special = special_file_reason(st.st_mode)
    if special is not None:
        raise DecodeError(special)
    if st.st_size == 0:
        raise DecodeError("empty file")

    try:
        handle = open(name, "rb")
    except OSError as exc:
        raise _io_failure(exc) from None

    with handle:
        try:
            head = handle.read(1024)
            handle.seek(0)
            return _decode(handle, head, st.st_size, max_pixels, background, draft_size)
        except DecodeError:
            raise
        except MemoryError:
            raise DecodeError("out of memory while decoding") from None
        except OSError as exc:
            if isinstance(exc, PermissionError):
                raise DecodeError("permission denied") from None
            raise DecodeError(f"cannot read file ({exc.strerror or _short(exc)})") from None
        except Exception as exc:  # any other library failure is still one bad file
            raise DecodeError(f"cannot decode image ({type(exc).__name__}: {_short(exc)})") from None


def _decode(
    handle: IO[bytes],
    head: bytes,
    size: int,
    max_pixels: int | None,
    background: tuple[int, int, int],
    draft_size: tuple[int, int] | None,
) -> Image.Image:
    """The Pillow part of :func:`open_image`; ``handle`` is open and non-empty."""
    with warnings.catch_warnings():
        # Pillow warns (to stderr) about bombs, odd EXIF, palette transparency;
        # our caller reports through exceptions and must stay quiet.
        warnings.simplefilter("ignore")
        try:
            try:
                img = Image.open(handle)
            except Image.DecompressionBombError:
                # Pillow refuses at twice its own global limit, before we can
                # see the size. Re-read the header with its check off: our
                # max_pixels decides, and the message needs width and height.
                handle.seek(0)
                with _pil_global(Image, "MAX_IMAGE_PIXELS", None):
                    img = Image.open(handle)
        except MemoryError:
            raise
        except Exception as exc:
            announced = _signature_format(head)
            if announced is None:
                raise DecodeError(_sniff_non_image(head)) from None
            raise DecodeError(_decode_failure(exc, announced, head, size)) from None

        fmt = img.format or "image"
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise DecodeError(
                f"image is {width}×{height} pixels, above the {max_pixels:,}-pixel "
                "limit; raise it with --max-pixels"
            )
        if width == 0 or height == 0:
            raise DecodeError(f"image has no pixels ({width}×{height})")

        if draft_size is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
            want_w, want_h = draft_size
            if _exif_orientation(img) in (5, 6, 7, 8):
                # The stored image is rotated 90° from how it is shown, and
                # draft_size is in shown orientation.
                want_w, want_h = want_h, want_w
            img.draft("RGB", (want_w, want_h))

        try:
            with _pil_global(ImageFile, "LOAD_TRUNCATED_IMAGES", False):
                img.load()
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(_decode_failure(exc, fmt, head, size)) from None

        shown = img
        # exif_transpose returns a full copy even when there is nothing to turn: ask first.
        if _exif_orientation(img) in range(2, 9):
            try:
                shown = ImageOps.exif_transpose(img)
            except Exception:  # broken EXIF: keep the pixels as stored
                pass
        try:
            rgb = _to_rgb(shown, background)
        except ValueError as exc:
            raise DecodeError(f"unsupported colour mode {img.mode} ({_short(exc)})") from None
    # The pixels are loaded into memory, so the image outlives the file handle closed here.
    return rgb
