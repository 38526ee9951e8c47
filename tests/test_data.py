"""Tests for effnet_cli.data: discovery, safe decoding and batched loading.

Every image is generated in tmp_path; each test checks something a user would
notice: a file skipped or listed twice, a wrong or vague error, a rotated or
washed-out picture, rows out of step with their inputs, a run that dies.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from effnet_cli.data import decode, loader
from effnet_cli.data import (
    CRASH_REASON,
    DEFAULT_MAX_PIXELS,
    Batch,
    default_workers,
    discover_inputs,
    iter_batches,
    open_image,
)
from effnet_cli.errors import DecodeError, InputError

# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def save(path: Path, img: Image.Image, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kwargs)
    return path


def solid(path: Path, colour=(255, 0, 0), size=(8, 8), fmt: str | None = None) -> Path:
    return save(path, Image.new("RGB", size, colour), fmt)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int, with_data: bool = False) -> bytes:
    """A tiny PNG whose header claims width×height RGB pixels (no huge file needed)."""
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if with_data:  # the start of a valid pixel stream, cut short
        comp = zlib.compressobj()
        out += png_chunk(b"IDAT", comp.compress(b"\0" * 4096) + comp.flush(zlib.Z_SYNC_FLUSH))
    return out + png_chunk(b"IEND", b"")


def to_tensor32(img: Image.Image) -> torch.Tensor:
    """Test transform: resize to 32×32 and scale to 0..1, 3×32×32 float32."""
    arr = np.asarray(img.resize((32, 32)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class CrashOnSize:
    """Transform that kills its process for images of one size, as a decoder segfault would."""

    def __init__(self, size: tuple[int, int], how: str = "exit") -> None:
        self.size = size
        self.how = how

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.size == self.size:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(1)
        return to_tensor32(img)


class CountingTransform:
    """Transform that leaves one marker file per image it processed (across processes)."""

    def __init__(self, marker_dir: Path) -> None:
        self.marker_dir = marker_dir

    def __call__(self, img: Image.Image) -> torch.Tensor:
        fd, _ = tempfile.mkstemp(dir=self.marker_dir)
        os.close(fd)
        return to_tensor32(img)


class SlowOnSize(CountingTransform):
    """Counting transform that takes ``seconds`` for images of one size (a big photo)."""

    def __init__(self, marker_dir: Path, size: tuple[int, int], seconds: float) -> None:
        super().__init__(marker_dir)
        self.size = size
        self.seconds = seconds

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.size == self.size:
            time.sleep(self.seconds)
        return super().__call__(img)


def failing_transform(img: Image.Image) -> torch.Tensor:
    if img.size == (5, 5):
        raise ValueError("boom")
    return to_tensor32(img)


def reason(path, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        open_image(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- #
# discovery
# --------------------------------------------------------------------------- #


def test_directory_is_walked_in_natural_order_images_only(tmp_path):
    d = tmp_path / "photos"
    for name in ["img10.png", "img2.png", "IMG1.JPG", "b.TIFF", "notes.txt", ".hidden.png"]:
        solid(d / name, fmt="PNG")
    solid(d / "sub" / "a.webp", fmt="PNG")
    solid(d / ".git" / "x.png", fmt="PNG")
    got = discover_inputs([str(d)])
    assert [os.path.relpath(p, d) for p in got] == [
        "b.TIFF", "IMG1.JPG", "img2.png", "img10.png", os.path.join("sub", "a.webp"),
    ]
    # returned as typed: joined onto the argument, not resolved
    assert all(p.startswith(str(d)) for p in got)


def test_relative_args_stay_relative(tmp_path, monkeypatch):
    solid(tmp_path / "dir" / "x.png")
    solid(tmp_path / "y.png")
    monkeypatch.chdir(tmp_path)
    assert discover_inputs(["dir", "./y.png"]) == [os.path.join("dir", "x.png"), "./y.png"]


def test_explicit_file_taken_whatever_its_extension(tmp_path):
    p = solid(tmp_path / "picture.data", fmt="PNG")
    assert discover_inputs([str(p)]) == [str(p)]


def test_argument_order_kept_and_duplicates_dropped(tmp_path, monkeypatch):
    a = solid(tmp_path / "a.png")
    b = solid(tmp_path / "b.png")
    (tmp_path / "link.png").symlink_to(a)
    monkeypatch.chdir(tmp_path)
    got = discover_inputs(["b.png", str(tmp_path), "./a.png", "link.png", "b.png"])
    # b first (as given), then the directory's a (b already listed), the rest are the same files
    assert got == ["b.png", str(tmp_path / "a.png")]
    assert {os.path.realpath(p) for p in got} == {str(a.resolve()), str(b.resolve())}


def test_globs_quoted_and_recursive(tmp_path):
    for name in ["x10.jpg", "x9.jpg", "y.png"]:
        solid(tmp_path / name, fmt="JPEG")
    solid(tmp_path / "deep" / "er" / "z.png")
    # what a quoted glob looks like: the literal name does not exist
    assert discover_inputs([str(tmp_path / "*.jpg")]) == [str(tmp_path / "x9.jpg"), str(tmp_path / "x10.jpg")]
    assert discover_inputs([str(tmp_path / "**" / "*.png")]) == [
        str(tmp_path / "deep" / "er" / "z.png"), str(tmp_path / "y.png"),
    ]


def test_literal_name_with_glob_characters_is_not_expanded(tmp_path):
    odd = solid(tmp_path / "a[1].png")
    solid(tmp_path / "a1.png")
    assert discover_inputs([str(odd)]) == [str(odd)]


def test_missing_paths_and_unmatched_globs_are_kept_for_an_error_record(tmp_path):
    good = solid(tmp_path / "ok.png")
    got = discover_inputs([str(tmp_path / "gone.jpg"), str(good), str(tmp_path / "*.gif")])
    assert got == [str(tmp_path / "gone.jpg"), str(good), str(tmp_path / "*.gif")]
    assert reason(got[0]) == "no such file"


def test_symlink_loop_terminates_without_duplicates(tmp_path):
    root = tmp_path / "root"
    solid(root / "a.png")
    solid(root / "sub" / "b.png")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(root / "sub", target_is_directory=True)
    got = discover_inputs([str(root)])
    assert sorted(os.path.realpath(p) for p in got) == sorted(
        [str((root / "a.png").resolve()), str((root / "sub" / "b.png").resolve())]
    )
    assert len(got) == 2


def test_unlistable_directory_and_dangling_link_get_their_own_records(tmp_path, monkeypatch):
    root = tmp_path / "root"
    solid(root / "a.png")
    locked = root / "locked"
    solid(locked / "hidden_from_us.png")
    (root / "z.png").symlink_to(root / "gone.png")
    real_scandir, real_access = os.scandir, os.access

    # Root reads every directory, so simulate what an ordinary user meets
    # with a chmod 000 folder.
    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: os.fspath(p) != str(locked) and real_access(p, mode, **kw))
    got = discover_inputs([str(root)])
    assert got == [str(root / "a.png"), str(locked), str(root / "z.png")]
    assert reason(locked) == "permission denied"
    assert reason(root / "z.png") == "no such file"


def test_stdin_lines(tmp_path):
    a = solid(tmp_path / "with space.png")
    b = solid(tmp_path / "ünïcödé.png")
    got = discover_inputs(["-"], stdin_lines=[f"{a}\n", f"{b}\r\n", "\n"])
    assert got == [str(a), str(b)]


def test_stdin_bytes_newline_separated(tmp_path):
    a = solid(tmp_path / "a.png")
    b = solid(tmp_path / "b.png")
    stream = io.BytesIO(f"{b}\n{a}\n".encode())
    assert discover_inputs(["-"], stdin=stream) == [str(b), str(a)]


def test_stdin_null_separated_name_with_newline(tmp_path):
    weird = solid(tmp_path / "line\nbreak.png")
    plain = solid(tmp_path / "plain.png")
    stream = io.BytesIO(os.fsencode(weird) + b"\0" + os.fsencode(plain) + b"\0")
    got = discover_inputs(["-"], stdin=stream, null_separated=True)
    assert got == [str(weird), str(plain)]
    assert open_image(got[0]).size == (8, 8)


@pytest.mark.skipif(sys.platform != "linux", reason="needs a byte-oriented file system")
def test_stdin_name_that_is_not_utf8_survives(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        Image.new("RGB", (4, 4)).save(f, "PNG")
    got = discover_inputs(["-"], stdin=io.BytesIO(raw + b"\n"))
    assert os.fsencode(got[0]) == raw
    assert open_image(got[0]).mode == "RGB"


def test_stdin_mixed_with_arguments_keeps_order(tmp_path):
    a, b, c = (solid(tmp_path / f"{n}.png") for n in "abc")
    got = discover_inputs([str(c), "-", str(a)], stdin_lines=[str(b), str(a)])
    assert got == [str(c), str(b), str(a)]


def test_no_inputs_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="^no input images"):
        discover_inputs([])
    with pytest.raises(InputError, match="^no input images"):
        discover_inputs([str(tmp_path / "empty")])
    with pytest.raises(InputError, match="^no input images"):
        discover_inputs(["-"], stdin_lines=[])


# --------------------------------------------------------------------------- #
# decoding: one case per kind of bad or unusual input
# --------------------------------------------------------------------------- #


def test_plain_rgb_jpeg(tmp_path):
    img = open_image(solid(tmp_path / "a.jpg", (0, 0, 255), (20, 10)))
    assert img.mode == "RGB" and img.size == (20, 10)
    r, g, b = img.getpixel((5, 5))
    assert b > 240 and r < 15 and g < 15


def test_truncated_jpeg_is_refused_not_padded(tmp_path):
    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    assert reason(p) == "truncated JPEG"


def test_truncated_jpeg_refused_even_if_other_code_allows_truncation(tmp_path, monkeypatch):
    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert reason(p) == "truncated JPEG"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # their setting is left alone


def test_truncated_png(tmp_path):
    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    assert reason(p) == "truncated PNG"


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_truncated_other_formats(tmp_path, fmt):
    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, fmt)
    p = tmp_path / "cut.img"
    p.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    assert reason(p) == f"truncated {fmt}"


def test_corrupt_pixel_data(tmp_path):
    full = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(full, "PNG")
    raw = bytearray(full.getvalue())
    start = raw.index(b"IDAT") + 4
    raw[start:start + 200] = bytes(200)  # zeros where the compressed pixels were
    payload_end = start + struct.unpack(">I", raw[start - 8:start - 4])[0]
    crc = zlib.crc32(bytes(raw[start - 4:payload_end]))
    raw[payload_end:payload_end + 4] = struct.pack(">I", crc)  # keep the chunk CRC valid
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(raw))
    assert reason(p) == "corrupt PNG data"


def test_other_files_named_like_images(tmp_path):
    cases = {
        "doc.jpg": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj",
        "phone.jpg": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic",
        "logo.png": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>',
        "photos.jpg": b"PK\x03\x04\x14\0\0\0\x08\0",
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    assert reason(tmp_path / "doc.jpg") == "not an image (PDF document)"
    assert reason(tmp_path / "phone.jpg") == "unsupported image format (HEIC/HEIF)"
    assert reason(tmp_path / "logo.png") == "unsupported image format (SVG)"
    assert reason(tmp_path / "photos.jpg") == "not an image (archive)"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_instead_of_hanging(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    assert reason(tmp_path / "pipe.jpg") == "not a regular file (named pipe)"


def test_socket_and_device_are_refused_without_being_opened(tmp_path):
    import socket

    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "sock.jpg"))
        assert reason(tmp_path / "sock.jpg") == "not a regular file (socket)"
    finally:
        server.close()
    # /dev/zero would read forever if it were opened.
    assert reason("/dev/zero") == "not a regular file (character device)"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_in_a_walked_directory_is_listed_for_its_record(tmp_path):
    """A FIFO named like a photo inside a folder is reported, not silently left out of the run."""
    solid(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.jpg")
    solid(tmp_path / "c.png")
    os.mkfifo(tmp_path / "notes")  # not named like an image: skipped, as a notes.txt would be
    got = discover_inputs([str(tmp_path)])
    assert got == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), str(tmp_path / "c.png")]
    _, rows, errors = collect(iter_batches(got, to_tensor32, batch_size=2, workers=0))
    assert errors == {1: "not a regular file (named pipe)"} and sorted(rows) == [0, 2]


def test_empty_text_and_html_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("shopping list: eggs, milk\n")
    (tmp_path / "page.jpg").write_text("<!DOCTYPE html><html><body>404</body></html>")
    (tmp_path / "junk.jpg").write_bytes(bytes(range(256)) * 4)
    assert reason(tmp_path / "empty.jpg") == "empty file"
    assert reason(tmp_path / "notes.jpg") == "not an image (text file)"
    assert reason(tmp_path / "page.jpg") == "not an image (HTML page)"
    assert reason(tmp_path / "junk.jpg") == "not an image (unrecognised format)"


def test_missing_directory_and_unreadable(tmp_path, monkeypatch):
    assert reason(tmp_path / "nope.jpg") == "no such file"
    # A directory where a file is expected.
    assert reason(tmp_path) == "is a directory"
    # Tests run as root, which reads anything: simulate the permission error
    # the open() call raises for an ordinary user on a chmod 000 file.
    p = solid(tmp_path / "locked.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode, "open", denied, raising=False)
    assert reason(p) == "permission denied"


def test_png_alpha_composited_on_white(tmp_path):
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 128))
    p = save(tmp_path / "alpha.png", img)
    out = open_image(p)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent: pure background
    r, g, b = out.getpixel((1, 0))
    assert r == 255 and 125 <= g <= 129 and 125 <= b <= 129  # half red over white
    assert open_image(p, background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 32768]], dtype=np.uint16)
    p = save(tmp_path / "deep.png", Image.fromarray(values))
    assert Image.open(p).mode.startswith("I;16")
    out = np.asarray(open_image(p))
    assert out[0, :, 0].tolist() == [0, 100, 255, 128]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_grayscale_and_palette(tmp_path):
    gray = save(tmp_path / "gray.png", Image.new("L", (3, 3), 77))
    assert open_image(gray).getpixel((1, 1)) == (77, 77, 77)
    pal = Image.new("RGB", (3, 3), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert open_image(save(tmp_path / "pal.png", pal)).getpixel((1, 1)) == (0, 200, 0)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    p = save(tmp_path / "pt.png", img, transparency=0)
    out = open_image(p)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)
    gif = save(tmp_path / "pt.gif", img, transparency=0)
    assert open_image(gif).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = save(tmp_path / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")
    assert Image.open(p).mode == "CMYK"
    out = open_image(p)
    r, g, b = out.getpixel((4, 4))
    assert out.mode == "RGB" and r > 230 and g < 30 and b < 30


def test_animated_gif_and_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    gif = save(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(gif).n_frames == 2
    assert open_image(gif).getpixel((3, 3)) == (255, 0, 0)
    webp = save(tmp_path / "anim.webp", frames[0], save_all=True, append_images=frames[1:],
                duration=50, lossless=True)
    assert open_image(webp).getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_applied_like_a_phone(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    p = save(tmp_path / "phone.jpg", img, "JPEG", exif=exif, quality=95)
    out = open_image(p)
    assert out.size == (20, 40)
    assert out.getpixel((15, 5))[0] > 200  # the mark is now top-right
    assert out.getpixel((5, 5))[0] < 50


def test_one_pixel_image(tmp_path):
    out = open_image(solid(tmp_path / "dot.png", (1, 2, 3), (1, 1)))
    assert out.size == (1, 1) and out.getpixel((0, 0)) == (1, 2, 3)


def test_decompression_bomb_refused_with_actionable_message(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_claiming(30000, 30000))
    assert DEFAULT_MAX_PIXELS == 89_478_485
    assert reason(p) == (
        "image is 30000×30000 pixels, above the 89,478,485-pixel limit; raise it with --max-pixels"
    )
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # global untouched


def test_pixel_limit_can_be_lowered_and_raised(tmp_path):
    small = solid(tmp_path / "small.png", size=(4, 4))
    assert reason(small, max_pixels=10) == (
        "image is 4×4 pixels, above the 10-pixel limit; raise it with --max-pixels"
    )
    assert open_image(small, max_pixels=16).size == (4, 4)
    # Above Pillow's own hard stop (2× its limit): raising ours lets decoding
    # start, which then finds the (cut short) pixel data.
    big = tmp_path / "big.png"
    big.write_bytes(png_claiming(20000, 20000, with_data=True))
    assert reason(big, max_pixels=None) == "truncated PNG"
    assert reason(big, max_pixels=400_000_000) == "truncated PNG"
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("name", ["with space.jpg", "ünïcödé 写真.png", "new\nline.png"])
def test_odd_file_names(tmp_path, name):
    p = solid(tmp_path / name, fmt="PNG")
    assert open_image(p).size == (8, 8)
    assert open_image(str(p)).mode == "RGB"


def test_draft_decodes_jpeg_at_reduced_size(tmp_path):
    p = save(tmp_path / "big.jpg", Image.effect_noise((800, 600), 40).convert("RGB"), "JPEG")
    out = open_image(p, draft_size=(100, 100))
    assert out.size == (200, 150)  # scale 1/4: the smallest that is still ≥ 100×100
    assert open_image(p).size == (800, 600)
    png = save(tmp_path / "big.png", Image.new("RGB", (800, 600)))
    assert open_image(png, draft_size=(100, 100)).size == (800, 600)  # not a JPEG


def test_draft_size_is_in_displayed_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    p = save(tmp_path / "rot.jpg", Image.new("RGB", (800, 400)), "JPEG", exif=exif)
    assert open_image(p, draft_size=(100, 200)).size == (100, 200)


def test_corrupt_exif_is_ignored(tmp_path):
    p = save(tmp_path / "e.jpg", Image.new("RGB", (8, 4)), "JPEG", exif=b"Exif\x00\x00II*\x00garbage")
    assert open_image(p).size == (8, 4)


# --------------------------------------------------------------------------- #
# property: nothing but an RGB image or a DecodeError, and quickly
# --------------------------------------------------------------------------- #

_MAGICS = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x01\x00\x00WEBPVP8 "]


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(_MAGICS), body=st.binary(max_size=600))
def test_random_bytes_decode_or_decode_error(tmp_path, prefix, body):
    p = tmp_path / "fuzz.jpg"
    p.write_bytes(prefix + body)
    try:
        out = open_image(p, max_pixels=1_000_000)
    except DecodeError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert out.mode == "RGB"


_MODES_BY_FORMAT = {
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "I;16", "1"],
    "JPEG": ["RGB", "L", "CMYK"],
    "GIF": ["P", "L"],
    "BMP": ["RGB", "L", "P", "1"],
    "TIFF": ["RGB", "RGBA", "L", "CMYK", "I;16"],
    "WEBP": ["RGB", "RGBA"],
}


@st.composite
def image_files(draw):
    fmt = draw(st.sampled_from(sorted(_MODES_BY_FORMAT)))
    mode = draw(st.sampled_from(_MODES_BY_FORMAT[fmt]))
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    elif mode == "P":
        img = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = rgba.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    raw = buf.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    return (raw if cut is None else raw[:cut]), size, cut is None


@settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_files())
def test_valid_or_cut_images_decode_or_decode_error(tmp_path, case):
    raw, size, whole = case
    p = tmp_path / "img"
    p.write_bytes(raw)
    try:
        out = open_image(p)
    except DecodeError as exc:
        assert not whole, f"a valid image was refused: {exc}"
    else:
        assert out.mode == "RGB"
        if whole:
            assert out.size == size


# --------------------------------------------------------------------------- #
# batched loading
# --------------------------------------------------------------------------- #


def make_inputs(tmp_path: Path, n: int = 11) -> tuple[list[str], dict[int, str]]:
    """n inputs, image i a solid colour with red = 10*i, plus known failures."""
    paths = [str(solid(tmp_path / f"img{i}.png", (10 * i, 50, 100), (6 + i % 3, 6))) for i in range(n)]
    bad: dict[int, str] = {}
    paths[2] = str(tmp_path / "missing.png")
    bad[2] = "no such file"
    (tmp_path / "text.jpg").write_text("not really\n")
    paths[5] = str(tmp_path / "text.jpg")
    bad[5] = "not an image (text file)"
    (tmp_path / "empty.png").write_bytes(b"")
    paths[n - 1] = str(tmp_path / "empty.png")
    bad[n - 1] = "empty file"
    return paths, bad


def collect(batches) -> tuple[list[Batch], dict[int, torch.Tensor], dict[int, str]]:
    got = list(batches)
    rows: dict[int, torch.Tensor] = {}
    errors: dict[int, str] = {}
    for batch in got:
        assert batch.pixel_values.shape[0] == len(batch.indices)
        assert sorted(batch.indices + [p for p, _ in batch.errors]) == list(batch.span)
        for pos, row, err in batch.outcomes():
            assert (row is None) != (err is None)
            if row is not None:
                assert pos not in rows
                rows[pos] = batch.pixel_values[row]
            else:
                assert pos not in errors
                errors[pos] = err
    return got, rows, errors


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_in_order_each_input_exactly_once(tmp_path, workers):
    paths, bad = make_inputs(tmp_path)
    got, rows, errors = collect(iter_batches(paths, to_tensor32, batch_size=4, workers=workers))
    assert [b.span for b in got] == [range(0, 4), range(4, 8), range(8, 11)]
    assert errors == bad
    assert sorted(rows) == [i for i in range(11) if i not in bad]
    for i, row in rows.items():
        assert row.shape == (3, 32, 32) and row.dtype == torch.float32
        # the row really is image i, not a neighbour's
        assert round(float(row[0].mean()) * 255) == 10 * i


def test_workers_and_in_process_agree(tmp_path):
    paths, _ = make_inputs(tmp_path)
    _, rows0, err0 = collect(iter_batches(paths, to_tensor32, batch_size=3, workers=0))
    _, rows2, err2 = collect(iter_batches(paths, to_tensor32, batch_size=3, workers=2))
    assert err0 == err2 and rows0.keys() == rows2.keys()
    assert all(torch.equal(rows0[i], rows2[i]) for i in rows0)


def niceness_of_this_process(_image) -> torch.Tensor:
    """A transform that reports the scheduling priority of the process it runs in."""
    return torch.full((3, 2, 2), float(os.nice(0)))


def test_workers_run_at_the_asked_lower_priority(tmp_path):
    paths, _ = make_inputs(tmp_path)
    own = os.nice(0)
    _, rows, _ = collect(iter_batches(paths, niceness_of_this_process, batch_size=4, workers=2, worker_nice=5))
    assert {float(r[0, 0, 0]) for r in rows.values()} == {float(min(own + 5, 19))}
    _, rows, _ = collect(iter_batches(paths, niceness_of_this_process, batch_size=4, workers=1))
    assert {float(r[0, 0, 0]) for r in rows.values()} == {float(own)}
    assert os.nice(0) == own  # the calling process keeps its priority


def test_engine_keeps_its_workers_at_normal_priority(monkeypatch):
    from effnet_cli.runtime import engine as inference

    calls = []
    monkeypatch.setattr(inference, "iter_batches", lambda *a, **kw: calls.append(kw["worker_nice"]) or iter(()))
    engine = inference.Engine.__new__(inference.Engine)
    engine.processor = SimpleNamespace(preprocess_pil=to_tensor32, do_resize=False, size={})
    engine.max_pixels, engine.draft = None, False
    for device, want in (("cpu", inference.WORKER_NICE), ("cuda", 0)):
        engine.device = torch.device(device)
        list(engine.batches([], batch_size=1, workers=1))
        assert calls.pop() == want
    # At a lower priority the workers starve behind any busy program and the model gets no images.
    assert inference.WORKER_NICE == 0


def test_start_resumes_at_a_position(tmp_path):
    paths, bad = make_inputs(tmp_path)
    got, rows, errors = collect(iter_batches(paths, to_tensor32, batch_size=4, workers=0, start=6))
    assert [b.span for b in got] == [range(6, 10), range(10, 11)]
    assert set(rows) | set(errors) == set(range(6, 11))


def test_all_failed_batch_and_no_inputs(tmp_path):
    batches = list(iter_batches([str(tmp_path / "a"), str(tmp_path / "b")], to_tensor32, batch_size=4, workers=0))
    assert len(batches) == 1 and batches[0].indices == [] and batches[0].pixel_values.shape[0] == 0
    assert batches[0].errors == [(0, "no such file"), (1, "no such file")]
    assert list(iter_batches([], to_tensor32, batch_size=4, workers=2)) == []


def test_transform_errors_become_records(tmp_path):
    paths = [str(solid(tmp_path / f"{i}.png", size=(5, 5) if i == 1 else (7, 7))) for i in range(3)]
    _, rows, errors = collect(iter_batches(paths, failing_transform, batch_size=3, workers=0))
    assert sorted(rows) == [0, 2]
    assert errors == {1: "preprocessing failed (ValueError: boom)"}


def test_open_kwargs_reach_the_decoder(tmp_path):
    paths = [str(solid(tmp_path / "a.png", size=(4, 4)))]
    _, _, errors = collect(iter_batches(paths, to_tensor32, batch_size=1, workers=0, open_kwargs={"max_pixels": 4}))
    assert errors == {0: "image is 4×4 pixels, above the 4-pixel limit; raise it with --max-pixels"}
    with pytest.raises(TypeError):
        next(iter_batches(paths, to_tensor32, batch_size=1, workers=0, open_kwargs={"max_pixel": 4}))


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError):
        next(iter_batches(["x"], to_tensor32, batch_size=0, workers=0))
    with pytest.raises(InputError):
        next(iter_batches(["x"], to_tensor32, batch_size=1, workers=-1))


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_crashing_decoder_costs_one_record_not_the_run(tmp_path, how):
    paths = [str(solid(tmp_path / f"{i}.png", (10 * i, 0, 0), (9, 9))) for i in range(10)]
    paths[6] = str(solid(tmp_path / "deadly.png", size=(13, 7)))
    t0 = time.monotonic()
    got, rows, errors = collect(iter_batches(paths, CrashOnSize((13, 7), how), batch_size=3, workers=2))
    assert [b.span for b in got] == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    assert errors == {6: CRASH_REASON}
    assert sorted(rows) == [i for i in range(10) if i != 6]
    assert all(round(float(rows[i][0].mean()) * 255) == 10 * i for i in rows)
    assert time.monotonic() - t0 < 30


def test_memory_stays_bounded(tmp_path):
    """The loader decodes only a few batches ahead of the consumer, never everything."""
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    one = str(solid(tmp_path / "a.png", size=(6, 6)))
    paths = [one] * 400
    gen = iter_batches(paths, CountingTransform(marker_dir), batch_size=2, workers=2, prefetch=2)
    first = next(gen)
    assert first.span == range(0, 2)
    time.sleep(1.0)  # give the workers every chance to run ahead
    decoded = len(os.listdir(marker_dir))
    # loader: workers*prefetch batches, hand-over queue: prefetch, one held by
    # the loader thread, one consumed: (2*2 + 2 + 1 + 1) batches of 2
    assert decoded <= 16, decoded
    gen.close()  # stopping early shuts the workers down
    time.sleep(0.5)
    settled = len(os.listdir(marker_dir))
    time.sleep(0.5)
    assert len(os.listdir(marker_dir)) == settled < 400


def test_default_workers():
    n = default_workers()
    assert 1 <= n <= 4


def test_slow_batch_is_not_mistaken_for_a_crash(tmp_path):
    """A batch slower than the worker liveness poll is waited for, not redone."""
    markers = tmp_path / "markers"
    markers.mkdir()
    paths = [str(solid(tmp_path / f"{i}.png", size=(6, 6) if i else (11, 11))) for i in range(3)]
    transform = SlowOnSize(markers, (11, 11), 3 * loader._LIVENESS_POLL_S)
    _, rows, errors = collect(iter_batches(paths, transform, batch_size=1, workers=2))
    assert errors == {} and sorted(rows) == [0, 1, 2]
    assert len(os.listdir(markers)) == 3  # each image decoded once: no rerun in isolation
