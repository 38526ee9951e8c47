"""EfficientNetImageProcessor against transformers' two EfficientNet image processors.

transformers 5 has a torchvision implementation (``EfficientNetImageProcessor``, what
AutoImageProcessor and pipeline load) and a PIL one (``EfficientNetImageProcessorPil``).
Ours reproduces the one its ``backend`` names to 1e-5 on real photos, and these tests
also pin how far it is from the other one (docs/preprocessing.md gives the numbers).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from effnet_cli.errors import ConfigError, InputError
from effnet_cli.core.processor import PREPROCESSOR_CONFIG_NAME, EfficientNetImageProcessor

transformers.logging.set_verbosity_error()  # its "ambiguous channel dimension" notes are noise here

REFERENCES = {
    "torchvision": transformers.EfficientNetImageProcessor,
    "pil": transformers.EfficientNetImageProcessorPil,
}


def _images_dir() -> Path:
    # The committed copy first; else the shared folder beside the clone (CI checks out elsewhere).
    here = Path(__file__).resolve().parent / "data" / "images"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1].parent / "shared" / "images"


IMAGES_DIR = _images_dir()
PHOTO_NAMES = ("astronaut", "cameraman", "cat", "espresso", "rocket")

# google/efficientnet-b0's preprocessor_config.json on the Hub, as published.
HUB_B0 = {
    "crop_size": {"height": 289, "width": 289},
    "do_center_crop": False,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "EfficientNetImageProcessor",
    "image_std": [0.47853944, 0.4732864, 0.47434163],
    "include_top": True,
    "resample": 0,
    "rescale_factor": 0.00392156862745098,
    "rescale_offset": False,
    "size": {"height": 224, "width": 224},
}

# Each case changes one thing a user would configure; resample is varied on top of each.
CASES = {
    "hub_include_top": {k: v for k, v in HUB_B0.items() if k not in ("resample", "image_processor_type")},
    "resize_crop_no_top": {"size": 256, "do_center_crop": True, "crop_size": 224, "include_top": False},
    # Crop larger than the resized image: zero padding, an odd amount on both axes.
    "crop_pads_odd": {"size": {"height": 224, "width": 240}, "do_center_crop": True, "crop_size": (301, 299)},
    "crop_pads_even": {"size": {"height": 224, "width": 240}, "do_center_crop": True, "crop_size": 300},
    "offset_minus1_to_1": {"size": 260, "rescale_factor": 1 / 127.5, "rescale_offset": True, "include_top": False},
    "offset_with_top": {"size": 200, "rescale_offset": True},
}
RESAMPLES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}

EXACT = 1e-5  # float32 rounding of the same arithmetic in a different order
LEVELS = 2  # bilinear/bicubic/lanczos: torchvision's uint8 kernels vs PIL's, measured max


@lru_cache(maxsize=None)
def photos() -> tuple[Image.Image, ...]:
    """The five sample photos, decoded once, as RGB (what the loader hands over)."""
    return tuple(Image.open(IMAGES_DIR / f"{name}.jpg").convert("RGB") for name in PHOTO_NAMES)


@lru_cache(maxsize=None)
def reference_pixels(backend: str, case: str, resample: int) -> np.ndarray:
    reference = REFERENCES[backend](**CASES[case], resample=resample)
    return reference(list(photos()), return_tensors="np")["pixel_values"]


@lru_cache(maxsize=None)
def our_pixels(backend: str, case: str, resample: int) -> np.ndarray:
    processor = EfficientNetImageProcessor(**CASES[case], resample=resample, backend=backend)
    return processor(list(photos()), return_tensors="np")["pixel_values"]


def one_level(processor: EfficientNetImageProcessor) -> float:
    """How much one 8-bit intensity step moves a pixel value, for the channel it moves most."""
    step = np.full(3, processor.rescale_factor if processor.do_rescale else 1.0)
    std = np.asarray(processor.image_std)
    if processor.do_normalize:
        step = step / std
    if processor.include_top:
        step = step / std
    return float(np.abs(step).max())


def max_diff(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def test_sample_photos_are_present():
    assert sorted(path.stem for path in IMAGES_DIR.glob("*.jpg")) == sorted(PHOTO_NAMES)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("resample", RESAMPLES.values(), ids=RESAMPLES.keys())
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_matches_the_chosen_reference_backend(backend, case, resample):
    ours = our_pixels(backend, case, resample)
    expected = reference_pixels(backend, case, resample)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert max_diff(ours, expected) <= EXACT


@pytest.mark.parametrize("resample", [1, 2, 3], ids=["lanczos", "bilinear", "bicubic"])
@pytest.mark.parametrize("case", [case for case in CASES if case != "crop_pads_odd"])
@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_other_backend_within_two_intensity_levels(backend, case, resample):
    # Both references resize on 8-bit pixels; their kernels round differently by at most 2 levels.
    other = "pil" if backend == "torchvision" else "torchvision"
    bound = LEVELS * one_level(EfficientNetImageProcessor(**CASES[case])) + EXACT
    assert max_diff(our_pixels(backend, case, resample), reference_pixels(other, case, resample)) <= bound


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_nearest_differs_between_backends_on_a_few_rows_and_columns(backend):
    # PIL's NEAREST samples one source pixel lower than floor((i + 0.5) * in / out) where that
    # lands on a whole number (fixed-point rounding); torchvision's NEAREST_EXACT does not.
    # On the hub config that is 7.7% of the values; we bound it, the rest is identical.
    other = "pil" if backend == "torchvision" else "torchvision"
    ours = our_pixels(backend, "hub_include_top", 0)
    theirs = reference_pixels(other, "hub_include_top", 0)
    differs = np.abs(ours - theirs) > EXACT
    assert 0 < differs.mean() <= 0.10


def test_odd_zero_padding_goes_before_the_image_in_pil_and_after_in_torchvision():
    white = Image.new("RGB", (3, 3), (255, 255, 255))
    options = dict(do_resize=False, do_center_crop=True, crop_size=6, do_normalize=False, include_top=False)
    for backend, first_row in (("pil", 2), ("torchvision", 1)):
        rows = EfficientNetImageProcessor(**options, backend=backend)(white).pixel_values[0, 0, :, 2]
        assert rows.tolist() == [1.0 if first_row <= i < first_row + 3 else 0.0 for i in range(6)]
        expected = REFERENCES[backend](**options)(white, return_tensors="np")["pixel_values"][0, 0, :, 2]
        assert rows.tolist() == expected.tolist()


# ----------------------------------------------------------------------------- hub config


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_hub_b0_config_gives_the_reference_pixels(backend):
    ours = EfficientNetImageProcessor.from_dict(HUB_B0, backend=backend)
    reference = REFERENCES[backend].from_dict(HUB_B0)
    expected = reference(list(photos()), return_tensors="pt")["pixel_values"]
    got = ours(list(photos())).pixel_values
    assert got.shape == (5, 3, 224, 224) and got.dtype == torch.float32
    assert max_diff(got, expected) <= EXACT
    assert ours.input_size == (224, 224)


def test_hub_b0_config_round_trips_through_dict_and_json(tmp_path):
    processor = EfficientNetImageProcessor.from_dict(HUB_B0)
    assert processor.to_dict() == HUB_B0
    # Byte for byte what transformers writes for the same config.
    assert processor.to_json_string() == transformers.EfficientNetImageProcessor.from_dict(HUB_B0).to_json_string()
    path = processor.to_json_file(tmp_path / PREPROCESSOR_CONFIG_NAME)
    assert json.loads(path.read_text()) == HUB_B0
    assert [p.name for p in tmp_path.iterdir()] == [PREPROCESSOR_CONFIG_NAME]  # no temporary left behind
    assert EfficientNetImageProcessor.from_json_file(path) == processor
    assert EfficientNetImageProcessor.from_pretrained(tmp_path) == processor


def test_unknown_keys_are_kept_and_the_type_is_ours():
    config = {**HUB_B0, "image_processor_type": "EfficientNetImageProcessorPil", "processor_class": "MyProcessor"}
    processor = EfficientNetImageProcessor.from_dict(config)
    assert processor.to_dict() == {**HUB_B0, "processor_class": "MyProcessor"}


def test_defaults_are_the_reference_defaults():
    expected = transformers.EfficientNetImageProcessor().to_dict()
    assert EfficientNetImageProcessor().to_dict() == json.loads(json.dumps(expected))


def test_transformers_loads_what_we_write(tmp_path):
    ours = EfficientNetImageProcessor.from_dict(HUB_B0, do_center_crop=True, crop_size=200, resample=3)
    ours.save_pretrained(tmp_path)
    loaded = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is transformers.EfficientNetImageProcessor
    assert json.loads(loaded.to_json_string()) == ours.to_dict()
    expected = loaded(list(photos()), return_tensors="pt")["pixel_values"]
    assert max_diff(ours(list(photos())).pixel_values, expected) <= EXACT


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_arrays_tensors_and_batches_give_the_same_as_pil(backend):
    processor = EfficientNetImageProcessor.from_dict(HUB_B0, backend=backend, resample=3)
    cat, espresso = photos()[2], photos()[3]
    expected = processor([cat, espresso]).pixel_values
    hwc = np.asarray(cat)  # read-only, as numpy gives it for PIL images
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    single_inputs = [hwc, chw, torch.from_numpy(chw), torch.from_numpy(hwc.copy()), hwc.astype(np.int64)]
    for image in single_inputs:
        assert torch.equal(processor(image).pixel_values[0], expected[0])
    espresso_chw = np.asarray(espresso).transpose(2, 0, 1)
    batches = ([cat, espresso], (hwc, espresso), [[cat], [espresso_chw]], [cat, torch.from_numpy(espresso_chw.copy())])
    for batch in batches:
        assert torch.equal(processor(batch).pixel_values, expected)
    stacked = np.stack([np.asarray(cat.resize((300, 200))), np.asarray(espresso.resize((300, 200)))])
    from_pil = processor([cat.resize((300, 200)), espresso.resize((300, 200))]).pixel_values
    assert torch.equal(processor(stacked).pixel_values, from_pil)
    assert torch.equal(processor(torch.from_numpy(stacked)).pixel_values, from_pil)


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_preprocess_pil_equals_call(backend):
    processor = EfficientNetImageProcessor(**CASES["crop_pads_odd"], resample=2, backend=backend)
    for photo in photos():
        single = processor.preprocess_pil(photo)
        assert single.shape == (3, 301, 299) and single.dtype == torch.float32 and single.is_contiguous()
        assert torch.equal(single, processor(photo).pixel_values[0])
    # Non-RGB images are converted on this path whatever do_convert_rgb says (the CLI classifies photos).
    grey = photos()[1].convert("L")
    assert torch.equal(processor.preprocess_pil(grey), processor(grey, do_convert_rgb=True).pixel_values[0])
    # Decode workers receive the bound method pickled.
    in_worker = pickle.loads(pickle.dumps(processor.preprocess_pil))
    assert torch.equal(in_worker(photos()[2]), processor.preprocess_pil(photos()[2]))
    assert in_worker.__self__ == processor


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_other_modes_become_rgb_like_the_reference(backend, mode):
    photo = photos()[2]
    image = photo.convert(mode)
    if "A" in mode:  # a real alpha gradient, so that compositing over white matters
        alpha = Image.linear_gradient("L").resize(photo.size)
        image.putalpha(alpha)
    reference = REFERENCES[backend](**CASES["hub_include_top"], resample=2, do_convert_rgb=True)
    expected = reference(image, return_tensors="np")["pixel_values"]
    got = EfficientNetImageProcessor(**CASES["hub_include_top"], resample=2, backend=backend,
                                     do_convert_rgb=True)(image).pixel_values
    assert max_diff(got, expected) <= EXACT


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_grey_and_rgba_arrays_match_the_same_pil_image(backend):
    processor = EfficientNetImageProcessor(size=128, backend=backend)
    grey = photos()[1].convert("L")
    expected = processor(grey, do_convert_rgb=True).pixel_values
    assert torch.equal(processor(np.asarray(grey)).pixel_values, expected)
    assert torch.equal(processor(np.asarray(grey)[..., None]).pixel_values, expected)
    opaque = np.concatenate([np.asarray(photos()[2]), np.full((*photos()[2].size[::-1], 1), 255, np.uint8)], axis=2)
    assert torch.equal(processor(opaque).pixel_values, processor(photos()[2]).pixel_values)
    # Semi-transparent arrays: blended over white with the reference's own rounding.
    gradient = np.linspace(0, 255, opaque.shape[1]).astype(np.uint8)[None, :]
    rgba = opaque.copy()
    rgba[..., 3] = gradient
    for image, options in ((rgba, {}), (rgba.astype(np.float32) / 255, {"do_rescale": False})):
        reference = REFERENCES[backend](size=128, do_convert_rgb=True, **options)
        expected = reference(image, return_tensors="np")["pixel_values"]
        got = EfficientNetImageProcessor(size=128, backend=backend, **options)(image).pixel_values
        assert max_diff(got, expected) <= EXACT


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_float_images_follow_the_reference(backend):
    hwc = np.asarray(photos()[2])
    unit = hwc.astype(np.float32) / 255  # already rescaled: the user turns do_rescale off
    whole = hwc.astype(np.float64)  # floats holding 0..255
    cases = ((unit, {"do_rescale": False}), (whole, {}), (unit.transpose(2, 0, 1), {"do_rescale": False}))
    for image, options in cases:
        config = {**CASES["resize_crop_no_top"], "resample": 3, **options}
        expected = REFERENCES[backend](**config)(image, return_tensors="np")["pixel_values"]
        got = EfficientNetImageProcessor(**config, backend=backend)(image).pixel_values
        assert max_diff(got, expected) <= EXACT


def test_float_image_in_unit_range_with_rescale_on_warns_and_still_matches():
    unit = np.asarray(photos()[2]).astype(np.float32) / 255
    with pytest.warns(UserWarning, match="do_rescale"):
        got = EfficientNetImageProcessor(size=64)(unit).pixel_values
    expected = transformers.EfficientNetImageProcessor(size=64)(unit, return_tensors="pt")["pixel_values"]
    assert max_diff(got, expected) <= EXACT


def test_return_tensors_and_overrides():
    processor = EfficientNetImageProcessor(size=64)
    as_numpy = processor(photos()[0], return_tensors="np").pixel_values
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32 and as_numpy.shape == (1, 3, 64, 64)
    assert isinstance(processor(photos()[0], return_tensors=None)["pixel_values"], np.ndarray)
    cropped = processor(photos()[0], do_center_crop=True, crop_size=(40, 50)).pixel_values
    assert cropped.shape == (1, 3, 40, 50) and processor.do_center_crop is False
    ragged = EfficientNetImageProcessor(size={"shortest_edge": 32}, do_center_crop=False)
    assert ragged.input_size is None
    square_and_wide = [photos()[0], photos()[2]]  # 512 × 512 and 451 × 300
    sizes = [a.shape for a in ragged(square_and_wide, return_tensors=None).pixel_values]
    assert sizes == [(3, 32, 32), (3, 32, 48)]
    with pytest.raises(InputError, match="different sizes"):
        ragged(square_and_wide)
    with pytest.raises(InputError, match="do_center_cropp"):
        processor(photos()[0], do_center_cropp=True)
    with pytest.raises(InputError, match="return_tensors"):
        processor(photos()[0], return_tensors="tf")
    with pytest.raises(InputError):
        processor("cat.jpg")
    with pytest.raises(InputError):
        processor([])


# ----------------------------------------------------------------------------- sizes


def test_input_size_and_draft_size_on_a_real_jpeg():
    processor = EfficientNetImageProcessor.from_dict(HUB_B0)
    assert processor.input_size == (224, 224)
    assert processor.replace(do_center_crop=True).input_size == (289, 289)
    assert processor.draft_size(4000, 3000) == (224, 224)
    assert processor.draft_size(400, 300) is None  # under twice the target: no DCT scaling applies
    assert processor.replace(do_resize=False).draft_size(4000, 3000) is None

    image = Image.open(IMAGES_DIR / "astronaut.jpg")  # 512 × 512
    request = processor.draft_size(*image.size)
    image.draft("RGB", request)
    assert image.size == (256, 256)  # decoded at 1/2 scale, never below the 224 target
    decoded = image.convert("RGB")
    assert processor.preprocess_pil(decoded).shape == (3, 224, 224)
    # Reduced decoding is an approximation: close to, not equal to, the full decode
    # (bicubic: 1.3 levels on average measured; nearest moves more, being a point sample).
    bicubic = processor.replace(resample=3)
    difference = (bicubic.preprocess_pil(decoded) - bicubic.preprocess_pil(photos()[0])).abs().mean()
    assert 0 < float(difference) <= 3 * one_level(bicubic)


def test_aspect_preserving_sizes_match_the_reference():
    sizes = ({"shortest_edge": 200}, {"shortest_edge": 200, "longest_edge": 260}, {"max_height": 150, "max_width": 150})
    for size in sizes:
        for backend in ("torchvision", "pil"):
            expected = REFERENCES[backend](size=size, resample=2)(photos()[4], return_tensors="np")["pixel_values"]
            got = EfficientNetImageProcessor(size=size, resample=2, backend=backend)(photos()[4]).pixel_values
            assert got.shape == expected.shape and max_diff(got, expected) <= EXACT


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"size": -224}, "size"),
        ({"size": {"height": 0, "width": 224}}, "size"),
        ({"size": {"longest_edge": 224}}, "size"),
        ({"size": "224"}, "size"),
        ({"crop_size": {"shortest_edge": 224}}, "crop_size"),
        ({"crop_size": (-1, 5)}, "crop_size"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
        ({"image_std": [0.5, 0.5, 0.5, 0.5]}, "image_std"),
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std"),
        ({"image_mean": [0.5, float("nan"), 0.5]}, "image_mean"),
        ({"resample": 7}, "resample"),
        ({"resample": "bicubic"}, "resample"),
        ({"rescale_factor": 0}, "rescale_factor"),
        ({"do_resize": "yes"}, "do_resize"),
        ({"include_top": 1}, "include_top"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(options, field):
    with pytest.raises(ConfigError, match=rf"^{field} ") as caught:
        EfficientNetImageProcessor.from_dict({**HUB_B0, **options})
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).count(". ") == 0  # one sentence


def test_assignment_is_validated_too():
    processor = EfficientNetImageProcessor()
    processor.size = 300
    assert processor.size == {"height": 300, "width": 300}
    with pytest.raises(ConfigError, match="^image_std "):
        processor.image_std = [1.0, 0.0, 1.0]


def test_unreadable_json_raises_config_error(tmp_path):
    path = tmp_path / PREPROCESSOR_CONFIG_NAME
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        EfficientNetImageProcessor.from_json_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError):
        EfficientNetImageProcessor.from_json_file(path)


def test_no_warning_for_ordinary_images():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EfficientNetImageProcessor()(list(photos()))


def test_settings_and_config_files_do_not_import_torch(tmp_path):
    # Preprocessing without torch (numpy + Pillow) needs the processor's settings: reading,
    # validating and writing them must not load torch or torchvision (a ~2.5 s import).
    script = (
        "import sys\n"
        "import effnet_cli.core.image_fields\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'image_fields'\n"
        "from effnet_cli.core.processor import EfficientNetImageProcessor\n"
        "processor = EfficientNetImageProcessor(size=224, image_mean=[0.4, 0.5, 0.6], resample=0)\n"
        f"processor.save_pretrained({str(tmp_path)!r})\n"
        f"again = EfficientNetImageProcessor.from_pretrained({str(tmp_path)!r})\n"
        "assert again == processor and again.resize_target(480, 640) == (224, 224)\n"
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules, 'processor'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_torch_and_torchvision_values_are_accepted_as_settings():
    from torchvision.transforms import InterpolationMode

    codes = {"NEAREST": 0, "NEAREST_EXACT": 0, "LANCZOS": 1, "BILINEAR": 2, "BICUBIC": 3, "BOX": 4, "HAMMING": 5}
    for mode in InterpolationMode:
        assert EfficientNetImageProcessor(resample=mode).resample == codes[mode.name]
    processor = EfficientNetImageProcessor(image_mean=torch.tensor([0.25, 0.5, 0.75]), image_std=np.full(3, 0.5))
    assert processor.image_mean == (0.25, 0.5, 0.75) and processor.image_std == (0.5, 0.5, 0.5)
