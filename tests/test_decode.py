"""Fast decoding: simplejpeg's scaled decode and the resize of the crop region alone.

* ``open_image(..., jpeg_decoder="simplejpeg")`` fails exactly as the Pillow path does
  (same reasons for damaged, truncated, CMYK, grey, oversized files), applies EXIF
  orientation, and gives pixels close to Pillow's for the same picture;
* without simplejpeg installed it is Pillow's path, pixel for pixel;
* :meth:`preprocess_pil_cropped` (resize only what the centre crop keeps) is within one
  8-bit level of resize-then-crop, but not identical, so exact decoding never uses it;
* the fast path ``classify`` takes by default keeps the top-1 of every sample photo with
  the bundled Lite0, and stays close to exact decoding.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from effnet_cli.data import open_image
from effnet_cli.errors import DecodeError

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    import simplejpeg  # noqa: F401
except ImportError:  # an optional extra: its tests need it, the rest do not
    HAVE_SIMPLEJPEG = False
else:
    HAVE_SIMPLEJPEG = True
needs_simplejpeg = pytest.mark.skipif(not HAVE_SIMPLEJPEG, reason="simplejpeg (the `simplejpeg` extra) is not installed")

DECODERS = ("pillow", "simplejpeg")


def outcome(path, **kwargs) -> tuple[str, object]:
    """("ok", size) or ("error", reason): what a user sees of one decode."""
    try:
        img = open_image(path, **kwargs)
    except DecodeError as exc:
        return "error", str(exc)
    assert img.mode == "RGB"
    return "ok", img.size


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def photo_like(size=(800, 600), seed=0) -> Image.Image:
    """Smooth colour gradients plus mild noise: compresses like a photo, unlike pure noise."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    rgb = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], axis=-1)
    rgb += rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- #
# simplejpeg: the same failures as Pillow, the same picture
# --------------------------------------------------------------------------- #


def hostile_jpegs(directory: Path) -> dict[str, Path]:
    """Damaged and unusual JPEGs a photo folder can hold."""
    good = jpeg_bytes(photo_like(), quality=90)
    files = {
        "truncated": good[: len(good) // 2],
        "header only": good[:400],
        "no end marker": good[:-2],
        "corrupt data": good[:800] + bytes(b ^ 0x5A for b in good[800:1600]) + good[1600:],
        "garbage after header": good[:200] + b"\x00" * 5000,
        "cmyk": jpeg_bytes(Image.new("CMYK", (640, 480), (0, 255, 255, 0))),
        "grey": jpeg_bytes(photo_like().convert("L")),
        "progressive": jpeg_bytes(photo_like(), progressive=True),
        "magic only": b"\xff\xd8\xff\xe0",
    }
    out = {}
    for name, data in files.items():
        path = directory / f"{name}.jpg"
        path.write_bytes(data)
        out[name] = path
    return out


@needs_simplejpeg
def test_hostile_jpegs_fail_or_decode_exactly_as_with_pillow(tmp_path):
    for name, path in hostile_jpegs(tmp_path).items():
        pillow = outcome(path, draft_size=(100, 100), jpeg_decoder="pillow")
        fast = outcome(path, draft_size=(100, 100), jpeg_decoder="simplejpeg")
        assert fast[0] == pillow[0], name
        if pillow[0] == "error":
            assert fast == pillow, name  # the same sentence
    # The damaged ones really are refused, with the reasons users already know.
    cases = hostile_jpegs(tmp_path)
    assert outcome(cases["truncated"], draft_size=(100, 100), jpeg_decoder="simplejpeg") == ("error", "truncated JPEG")


@needs_simplejpeg
def test_the_loader_gives_every_hostile_file_the_same_record_with_either_decoder(tmp_path, photos):
    from effnet_cli.data import iter_batches
    from effnet_cli.processor import EfficientNetImageProcessor

    processor = EfficientNetImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                                           do_center_crop=True, resample=2)
    paths = [str(p) for p in (*photos, *hostile_jpegs(tmp_path).values())] + [str(tmp_path / "missing.jpg")]

    def records(decoder: str) -> list[tuple[int, str | None]]:
        kwargs = {"draft_size": (96, 96), "jpeg_decoder": decoder}
        return [(pos, err) for batch in iter_batches(paths, processor.preprocess_pil, batch_size=4, workers=0,
                                                     open_kwargs=kwargs)
                for pos, _, err in batch.outcomes()]

    pillow, fast = records("pillow"), records("simplejpeg")
    assert fast == pillow
    assert [pos for pos, _ in fast] == list(range(len(paths)))  # every input has its record, in order
    assert sum(err is not None for _, err in fast) >= 4  # damaged files and the missing one are refused


@needs_simplejpeg
def test_grey_and_cmyk_jpegs_decode_as_before(tmp_path):
    cases = hostile_jpegs(tmp_path)
    for name in ("grey", "cmyk"):
        pillow = open_image(cases[name], draft_size=(100, 100), jpeg_decoder="pillow")
        fast = open_image(cases[name], draft_size=(100, 100), jpeg_decoder="simplejpeg")
        assert fast.size == pillow.size and np.array_equal(np.asarray(fast), np.asarray(pillow)), name


@needs_simplejpeg
def test_pixel_limit_is_checked_before_simplejpeg_decodes(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(photo_like((800, 600))))
    want = "image is 800×600 pixels, above the 100,000-pixel limit; raise it with --max-pixels"
    for decoder in DECODERS:
        assert outcome(path, max_pixels=100_000, draft_size=(100, 100), jpeg_decoder=decoder) == ("error", want)



@needs_simplejpeg
@settings(max_examples=60, deadline=4000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
       flip=st.one_of(st.none(), st.integers(0, 10_000)), progressive=st.booleans())
def test_cut_or_damaged_jpegs_get_the_same_outcome_from_both_decoders(tmp_path, seed, cut, flip, progressive):
    raw = bytearray(jpeg_bytes(photo_like((300, 200), seed), quality=85, progressive=progressive))
    if flip is not None:
        raw[flip % len(raw)] ^= 0xFF
    if cut is not None:
        raw = raw[: int(len(raw) * cut)]
    path = tmp_path / "img.jpg"
    path.write_bytes(bytes(raw))
    pillow = outcome(path, draft_size=(60, 60), jpeg_decoder="pillow")
    fast = outcome(path, draft_size=(60, 60), jpeg_decoder="simplejpeg")
    assert fast[0] == pillow[0]
    if pillow[0] == "error":
        assert fast == pillow


@needs_simplejpeg
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path, orientation):
    img = photo_like((800, 400))
    img.paste((255, 255, 255), (0, 0, 200, 200))  # a white mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_bytes(img, exif=exif, quality=95))
    full = open_image(path)  # Pillow, full size: how a viewer shows it
    fast = open_image(path, draft_size=(100, 100), jpeg_decoder="simplejpeg")
    assert (fast.width > fast.height) == (full.width > full.height)
    assert min(fast.size) >= 100
    shrunk = np.asarray(full.resize(fast.size, Image.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(fast, dtype=np.float32) - shrunk).mean() < 6  # the mark is where the viewer puts it


@needs_simplejpeg
def test_simplejpeg_stops_at_or_above_the_draft_size_and_below_pillows(tmp_path):
    path = tmp_path / "camera.jpg"
    path.write_bytes(jpeg_bytes(photo_like((1600, 1200)), quality=90))
    pillow = open_image(path, draft_size=(384, 384), jpeg_decoder="pillow")
    fast = open_image(path, draft_size=(384, 384), jpeg_decoder="simplejpeg")
    assert pillow.size == (800, 600)  # Pillow's scales are 1/2, 1/4, 1/8
    assert 384 <= min(fast.size) < min(pillow.size)  # libjpeg-turbo's come in eighths
    full = open_image(path)
    shrunk = np.asarray(full.resize(fast.size, Image.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(fast, dtype=np.float32) - shrunk).mean() < 4


@needs_simplejpeg
def test_without_simplejpeg_it_is_the_pillow_path(tmp_path, monkeypatch):
    path = tmp_path / "camera.jpg"
    path.write_bytes(jpeg_bytes(photo_like((1600, 1200)), quality=90))
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import fails, as when it is not installed
    fast = open_image(path, draft_size=(384, 384), jpeg_decoder="simplejpeg")
    pillow = open_image(path, draft_size=(384, 384), jpeg_decoder="pillow")
    assert fast.size == pillow.size and np.array_equal(np.asarray(fast), np.asarray(pillow))


def test_unknown_decoder_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="jpeg_decoder"):
        open_image(tmp_path / "x.jpg", jpeg_decoder="libjpeg")


# --------------------------------------------------------------------------- #
# resizing only the crop region
# --------------------------------------------------------------------------- #


def _levels(tensor: torch.Tensor, processor) -> torch.Tensor:
    """Preprocessed pixels back in 8-bit levels (undo the per-channel multiply-add)."""
    from effnet_cli.processor import _affine_coefficients

    scale, shift = _affine_coefficients(processor.do_rescale, processor.rescale_factor, processor.rescale_offset,
                                        processor.do_normalize, processor.image_mean, processor.image_std,
                                        processor.include_top)
    return (tensor - shift) / scale


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("resample", [2, 3])  # bilinear (Lite0), bicubic
def test_cropped_resize_is_within_one_level_of_resize_then_crop(photos, backend, resample):
    from effnet_cli.processor import EfficientNetImageProcessor

    processor = EfficientNetImageProcessor(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224},
                                           do_center_crop=True, resample=resample, backend=backend)
    processor = processor.replace(size={"shortest_edge": 256})
    identical = 0
    for path in photos:
        image = open_image(path)
        exact = _levels(processor.preprocess_pil(image), processor)
        cropped = _levels(processor.preprocess_pil_cropped(image), processor)
        assert cropped.shape == exact.shape == (3, 224, 224)
        assert (cropped - exact).abs().max() < 1 + 1e-3, path.name
        identical += torch.equal(cropped.round(), exact.round())
    # Not a free speed-up for exact decoding: the filter weights round differently.
    assert identical < len(photos)


def test_cropped_resize_falls_back_where_there_is_nothing_to_fuse(photos):
    from effnet_cli.processor import EfficientNetImageProcessor

    processor = EfficientNetImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                           do_center_crop=True, resample=2)
    small = Image.open(photos[0]).convert("RGB").resize((100, 80))  # upscaled to 256, then cropped
    assert torch.equal(processor.preprocess_pil_cropped(small), processor.preprocess_pil(small))
    image = open_image(photos[0])
    for other in (processor.replace(do_center_crop=False), processor.replace(resample=0)):  # no crop; nearest
        assert torch.equal(other.preprocess_pil_cropped(image), other.preprocess_pil(image))


# --------------------------------------------------------------------------- #
# the adopted default, with real weights
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def lite0():
    from effnet_cli import load_pretrained
    from effnet_cli.errors import EffnetError

    try:
        return load_pretrained("lite0")
    except (EffnetError, ImportError):
        pytest.skip("the bundled Lite0 weights are not installed")


def test_fast_decoding_keeps_top1_of_the_sample_photos_and_stays_close(lite0, photos, tmp_path):
    from effnet_cli.inference import Engine

    model, processor = lite0
    fast = Engine(model, processor, device="cpu", draft=True)  # what `classify` decodes with by default
    exact = Engine(model, processor, device="cpu", draft=False)
    assert "draft_size" in fast.open_kwargs and "draft_size" not in exact.open_kwargs
    assert exact.transform == processor.preprocess_pil  # exact decoding: the reference's resize, then crop
    # The sample photos as they come, and enlarged to camera sizes, where the decoder scales the most.
    paths = list(photos)
    for i, path in enumerate(photos):
        big = open_image(path).resize((1600 + 400 * i, 1200 + 300 * i), Image.BICUBIC)
        target = tmp_path / f"{path.stem}-big.jpg"
        big.save(target, "JPEG", quality=92)
        paths.append(target)
    x_fast = torch.stack([fast.transform(open_image(p, **fast.open_kwargs)) for p in paths])
    x_exact = torch.stack([exact.transform(open_image(p, **exact.open_kwargs)) for p in paths])
    reduced = [p for p in paths if open_image(p, **fast.open_kwargs).size != open_image(p).size]
    assert len(reduced) >= len(photos)  # the fast path really decoded something smaller
    # Close: on average well under 2 levels of 255 apart (the resize filters differ in detail).
    assert (_levels(x_fast, processor) - _levels(x_exact, processor)).abs().mean() < 2.0
    assert fast.logits(x_fast).argmax(-1).tolist() == exact.logits(x_exact).argmax(-1).tolist()
