"""Inputs, safe decoding and batched loading: the first three steps of the pipeline.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    this module

* :func:`discover_inputs` turns command-line arguments (files, directories,
  globs, ``-`` for stdin) into an ordered, de-duplicated list of paths. A path
  that does not exist stays in the list, so it gets its own error record later.
* :func:`open_image` decodes one file into an RGB :class:`PIL.Image.Image`, or
  raises :class:`~effnet_cli.errors.DecodeError` with a short reason a user
  understands ("truncated JPEG", "empty file", ...).
* :func:`iter_batches` decodes and preprocesses in worker processes and yields
  :class:`Batch` objects in input order; every input appears in exactly one
  batch, either as a row of pixel values or as an error. A worker that dies
  (segfault in a decoder, ``os._exit``, SIGKILL) costs one error record, not the run.

Nothing here prints or imports typer/rich; torch is imported only when batches
are made, so discovery and decoding stay cheap to import.
"""

from __future__ import annotations

import functools
import glob
import inspect
import multiprocessing
import os
import pickle
import queue
import re
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Union

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from effnet_cli.errors import DecodeError, InputError

if TYPE_CHECKING:  # pragma: no cover - torch is imported lazily at run time
    import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_BACKGROUND",
    "CRASH_REASON",
    "Batch",
    "discover_inputs",
    "open_image",
    "iter_batches",
    "default_workers",
]

# Extensions picked up when a directory is walked (compared case-insensitively).
# Files named explicitly are always taken, whatever their extension.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
)

# Pillow's own default (1024 * 1024 * 1024 // 4 // 3), written out so that code
# elsewhere changing Image.MAX_IMAGE_PIXELS does not silently change our limit.
DEFAULT_MAX_PIXELS = 89_478_485

# Transparent pixels are composited on white: what a browser or photo viewer
# shows for a transparent PNG on a plain page.
DEFAULT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Reason recorded for an input whose decoder took its process down with it.
CRASH_REASON = "decoder process crashed"

_GLOB_MAGIC = re.compile(r"[*?[]")
_DIGITS = re.compile(r"(\d+)")
_MAX_DETAIL = 120  # longest library message quoted inside a reason

# Serialises the rare moments when we must flip one of Pillow's module globals
# (see _pil_global); plain decoding never takes it.
_PIL_GLOBALS_LOCK = threading.RLock()


# --------------------------------------------------------------------------- #
# Input discovery
# --------------------------------------------------------------------------- #


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
    vanishing.
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
            is_file = entry.is_file()
            is_link = entry.is_symlink()
        except OSError:
            is_dir = is_file = False
            is_link = True
        if is_dir:
            unreadable = enter(child)
            if unreadable is not None:
                yield unreadable
        elif _is_image_name(entry.name) and (is_file or is_link):
            # A dangling symlink named like an image is kept: the user will
            # want to hear that it points nowhere ("no such file").
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
    found: list[str] = []
    seen: set[str] = set()
    visited_dirs: set[tuple[int, int]] = set()
    walked: list[str] = []  # for the error message when nothing is found
    stdin_names: list[str] | None = None

    def add(path: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    def add_existing_or_missing(path: str) -> None:
        if os.path.isdir(path):
            walked.append(path)
            for image in _walk_images(path, visited_dirs):
                add(image)
        else:
            add(path)

    for raw in args:
        arg = os.fspath(raw)
        if arg == "-":
            if stdin_names is None:  # stdin can only be read once
                stdin_names = _split_stdin(stdin_lines, stdin, null_separated)
                for name in stdin_names:
                    add_existing_or_missing(name)
            continue
        if os.path.lexists(arg) or not _GLOB_MAGIC.search(arg):
            add_existing_or_missing(arg)
            continue
        matches = glob.glob(arg, recursive=True)
        if not matches:
            # As the shell does with an unmatched glob: pass it on literally,
            # so the user sees "no such file" for exactly what they typed.
            add(arg)
            continue
        for match in sorted(matches, key=_path_key):
            add_existing_or_missing(match)

    if not found:
        if not args:
            detail = "give image files, directories or globs, or - to read paths from stdin"
        elif walked:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            detail = f"no files ending in {exts} under {', '.join(walked)}"
        else:
            detail = "stdin listed no paths"
        raise InputError(f"no input images: {detail}")
    return found


# --------------------------------------------------------------------------- #
# Safe decoding
# --------------------------------------------------------------------------- #


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


def _short(exc: BaseException) -> str:
    """A library's exception message on one line, short enough to quote."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


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
    except FileNotFoundError:
        raise DecodeError("no such file") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except NotADirectoryError:
        raise DecodeError("no such file (a parent is not a directory)") from None
    except OSError as exc:
        raise DecodeError(f"cannot read file ({exc.strerror or _short(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(name, os.R_OK | os.X_OK):
            raise DecodeError("permission denied")
        raise DecodeError("is a directory")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO with no writer would block forever.
        raise DecodeError("not a regular file")
    if st.st_size == 0:
        raise DecodeError("empty file")

    try:
        handle = open(name, "rb")
    except FileNotFoundError:
        raise DecodeError("no such file") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except IsADirectoryError:
        raise DecodeError("is a directory") from None
    except OSError as exc:
        raise DecodeError(f"cannot read file ({exc.strerror or _short(exc)})") from None

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


# --------------------------------------------------------------------------- #
# Batched loading
# --------------------------------------------------------------------------- #


@dataclass
class Batch:
    """One batch of decoded inputs, covering the positions ``span`` of the input list.

    Every position in ``span`` is in exactly one of ``indices`` (decoded; its
    pixels are row ``indices.index(pos)`` of ``pixel_values``) or ``errors``.
    ``pixel_values`` is N×3×H×W with N = ``len(indices)``; when every item
    failed it is an empty tensor and must not be fed to a model.
    """

    indices: list[int]
    pixel_values: torch.Tensor
    errors: list[tuple[int, str]] = field(default_factory=list)
    span: range = range(0)

    def outcomes(self) -> Iterator[tuple[int, int | None, str | None]]:
        """(position, row in pixel_values or None, error or None), in input order.

        This is the order writers emit records in, so output rows never get
        out of step with the inputs.
        """
        rows = {pos: row for row, pos in enumerate(self.indices)}
        reasons = dict(self.errors)
        for pos in self.span:
            yield pos, rows.get(pos), reasons.get(pos)


# (position, tensor or None, error or None) for one input
_Outcome = tuple[int, Union["torch.Tensor", None], Union[str, None]]


class _BatchDataset:
    """Map-style dataset whose item ``b`` is the whole batch ``b`` (a Batch).

    Making whole batches inside the worker lets a failed image simply be
    left out of the stack, and the stacked tensor travels to the main process
    once, through torch's shared memory.
    """

    def __init__(
        self,
        paths: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
        batch_size: int,
        start: int,
        open_kwargs: dict[str, Any],
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.batch_size = batch_size
        self.start = start
        self.open_kwargs = open_kwargs

    def __len__(self) -> int:
        remaining = max(0, len(self.paths) - self.start)
        return -(-remaining // self.batch_size)

    def span(self, b: int) -> range:
        first = self.start + b * self.batch_size
        return range(first, min(first + self.batch_size, len(self.paths)))

    def load(self, positions: Iterable[int]) -> list[_Outcome]:
        """Decode and transform each position; every failure becomes a reason."""
        import torch

        outcomes: list[_Outcome] = []
        for pos in positions:
            try:
                image = open_image(self.paths[pos], **self.open_kwargs)
            except DecodeError as exc:
                outcomes.append((pos, None, str(exc)))
                continue
            except MemoryError:
                outcomes.append((pos, None, "out of memory while decoding"))
                continue
            except Exception as exc:  # a bug in decoding must still cost one file only
                outcomes.append((pos, None, f"cannot decode image ({type(exc).__name__}: {_short(exc)})"))
                continue
            try:
                tensor = self.transform(image)
                if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
                    got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                    raise TypeError(f"expected a C×H×W tensor, got {got}")
            except MemoryError:
                outcomes.append((pos, None, "out of memory while preprocessing"))
                continue
            except Exception as exc:
                outcomes.append((pos, None, f"preprocessing failed ({type(exc).__name__}: {_short(exc)})"))
                continue
            outcomes.append((pos, tensor, None))
        return outcomes

    def __getitem__(self, b: int) -> Batch:
        span = self.span(b)
        return _assemble(span, self.load(span))


def _assemble(span: range, outcomes: Iterable[_Outcome]) -> Batch:
    """Stack the decoded tensors of one batch; failures become error entries."""
    import torch

    indices: list[int] = []
    tensors: list[torch.Tensor] = []
    errors: list[tuple[int, str]] = []
    shape: tuple[int, ...] | None = None
    for pos, tensor, error in sorted(outcomes, key=lambda o: o[0]):
        if tensor is None:
            errors.append((pos, error or "unknown error"))
            continue
        if shape is None:
            shape = tuple(tensor.shape)
        elif tuple(tensor.shape) != shape:
            # A transform without a fixed output size: the odd one cannot be
            # stacked, and guessing a resize here would change the numbers.
            errors.append((pos, f"preprocessed to shape {tuple(tensor.shape)}, "
                                f"but this batch is {shape}"))
            continue
        indices.append(pos)
        tensors.append(tensor)
    pixel_values = torch.stack(tensors) if tensors else torch.empty((0, 3, 0, 0))
    return Batch(indices=indices, pixel_values=pixel_values, errors=errors, span=span)


def _worker_init(_worker_id: int, nice: int = 0) -> None:
    """Keep each decode worker to one intra-op thread, at ``nice`` lower priority.

    Workers and the model share the same few cores; torch's default of one
    thread per core in every process would oversubscribe them badly. Why the
    priority: see ``worker_nice`` in :func:`iter_batches`.
    """
    import torch

    from effnet_cli.malloc import return_freed_memory

    torch.set_num_threads(1)
    return_freed_memory()  # flat memory however many images a worker decodes
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: decoding still works, only less politely
            pass


def _identity(batch: Batch) -> Batch:
    return batch


def _isolated_main(dataset: _BatchDataset, positions: list[int], conn: Any) -> None:
    """Body of a single-use subprocess: load ``positions`` and send the outcomes back."""
    _worker_init(0)
    outcomes = dataset.load(positions)
    # Plain pickle copies tensor data into the message; the default
    # (torch's shared-memory reducer) would hand over file descriptors that
    # vanish with this short-lived process.
    conn.send_bytes(pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL))
    conn.close()


def _run_isolated(dataset: _BatchDataset, positions: list[int]) -> list[_Outcome] | None:
    """Load ``positions`` in a fresh process; ``None`` if that process died."""
    ctx = multiprocessing.get_context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_main, args=(dataset, positions, sender), daemon=True)
    proc.start()
    sender.close()  # so recv sees EOF when the child dies without answering
    try:
        payload = receiver.recv_bytes()
    except (EOFError, OSError):
        payload = None
    finally:
        receiver.close()
        proc.join()
    if payload is None:
        return None
    return pickle.loads(payload)


def _recover_batch(dataset: _BatchDataset, b: int) -> Batch:
    """Redo batch ``b`` after a worker died, finding which input(s) kill the decoder.

    First the whole batch in one fresh process (the crash may have been in a
    neighbouring batch); if that dies too, each input alone, so exactly the
    culprits are marked as crashed and the rest keep their results.
    """
    span = dataset.span(b)
    outcomes = _run_isolated(dataset, list(span))
    if outcomes is None:
        outcomes = []
        for pos in span:
            single = _run_isolated(dataset, [pos])
            outcomes.extend(single if single is not None else [(pos, None, CRASH_REASON)])
    return _assemble(span, outcomes)


_DONE = object()

# Seconds between checks that the decode workers are still alive.
_LIVENESS_POLL_S = 0.5


def _is_loader_timeout(exc: RuntimeError) -> bool:
    """True for the DataLoader's "timed out" error, which only means "not ready yet".

    Matched on torch's message; should it ever change, a slow batch is taken
    for a crash and redone in a fresh process: slower, but nothing is lost.
    """
    return "timed out" in str(exc)


class _LoaderThread(threading.Thread):
    """Runs the DataLoader and hands finished batches over through a bounded queue.

    Why a thread: a DataLoader iterated in the main thread installs a SIGCHLD
    handler that raises "worker exited unexpectedly" in the main thread
    wherever it happens to be, e.g. in the middle of the consumer's model
    call, where it cannot be caught and recovered. Iterated here, a dead
    worker surfaces as a RuntimeError from ``next()`` in this thread (torch
    polls worker liveness every few seconds), where we can redo that batch
    and carry on with a new loader.
    """

    def __init__(self, dataset: _BatchDataset, workers: int, prefetch: int, nice: int = 0) -> None:
        super().__init__(name="effnet-batch-loader", daemon=True)
        self.dataset = dataset
        self.workers = workers
        self.prefetch = prefetch
        self.nice = nice
        # Bounded: together with the loader's own prefetch this caps the
        # number of decoded-but-unconsumed batches however many inputs there are.
        self.out: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _loader(self, first: int) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(
            self.dataset,
            batch_size=None,  # each dataset item already is a batch
            sampler=range(first, len(self.dataset)),
            num_workers=self.workers,
            collate_fn=_identity,
            prefetch_factor=self.prefetch,
            worker_init_fn=functools.partial(_worker_init, nice=self.nice),
            # Not a limit on how long a batch may take (a timeout just means
            # "ask again"), but how often torch checks that its workers are
            # alive: without it, a dead worker is noticed only every 5 s.
            timeout=_LIVENESS_POLL_S,
        )

    def run(self) -> None:
        try:
            b = 0
            total = len(self.dataset)
            while b < total and not self.stop.is_set():
                it = iter(self._loader(b))
                try:
                    while b < total:
                        try:
                            batch = next(it)
                        except RuntimeError as exc:
                            if _is_loader_timeout(exc):
                                continue  # only slow: the batch is still on its way
                            # A worker died (or the loader broke). Batches
                            # before b were all delivered; redo b in
                            # isolation and restart the loader after it.
                            batch = _recover_batch(self.dataset, b)
                            b += 1
                            if not self._put(batch):
                                return
                            break
                        b += 1
                        if not self._put(batch):
                            return
                finally:
                    del it  # shuts the workers down
            self._put(_DONE)
        except BaseException as exc:  # hand any bug to the consumer, do not hang it
            self._put(exc)


def default_workers() -> int:
    """Number of decode worker processes to use by default: the usable cores, at most 4.

    More than four rarely helps: the model, not JPEG decoding, is the
    bottleneck, and every worker costs memory.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # respects taskset / container limits
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def iter_batches(
    paths: Sequence[str],
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    batch_size: int,
    workers: int,
    open_kwargs: dict[str, Any] | None = None,
    start: int = 0,
    prefetch: int = 2,
    worker_nice: int = 0,
) -> Iterator[Batch]:
    """Decode, preprocess and stack ``paths[start:]`` in batches, in input order.

    ``transform`` turns an RGB image into a 3×H×W tensor (it must be picklable
    when worker processes are started with "spawn"). Each :class:`Batch`
    covers the next ``batch_size`` positions (``span``); every position comes
    out exactly once, as a row of ``pixel_values`` or as an error reason.

    With ``workers > 0`` decoding runs in that many processes, ``prefetch``
    batches per worker ahead of the consumer; memory stays bounded because at
    most about ``workers * prefetch + prefetch + 2`` batches exist at once. A
    worker that dies costs only the input that killed it ("decoder process
    crashed"). ``workers == 0`` decodes in the calling thread, one batch at a
    time, with no overlap (simplest to debug; a crash there is the process's).

    ``worker_nice`` lowers the workers' scheduling priority by that much. Use
    it when the consumer computes on the same CPU cores: a CPU model's
    threads wait for each other at the end of every op, so a worker that
    preempts one of them stalls them all; a niced worker runs in the gaps
    (while the model waits for its next batch) instead, which made the whole
    pipeline 1.15-1.5× faster in steady state on 2 cores (docs/benchmarks.md).

    Closing the generator early (``break``) stops the workers.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    if prefetch < 1:
        raise InputError(f"prefetch must be at least 1, got {prefetch}")
    if not 0 <= start <= len(paths):
        raise InputError(f"start must be between 0 and {len(paths)}, got {start}")
    kwargs = dict(open_kwargs or {})
    # Fail fast on a misspelt option, instead of once per image in the workers.
    inspect.signature(open_image).bind("", **kwargs)

    dataset = _BatchDataset(paths, transform, batch_size, start, kwargs)
    if workers == 0:
        for b in range(len(dataset)):
            yield dataset[b]
        return

    thread = _LoaderThread(dataset, workers, prefetch, worker_nice)
    thread.start()
    try:
        while True:
            item = thread.out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        thread.stop.set()
        thread.join(timeout=30)
