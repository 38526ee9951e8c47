"""effnet_cli.core.numpy_pixels: torch-free preprocessing equal to EfficientNetImageProcessor.preprocess_pil.

Every configuration effnet's own files use (the bundled lite0, the hub's b* files, each
converter's preset) on the sample photos and on small generated images of odd sizes and
modes, both backends: the numbers must agree to 1e-6 (they agree bit for bit today).
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from effnet_cli.core.numpy_pixels import PixelPipeline, UnsupportedPreprocessing, _nearest_exact_index, _resize_torch_aa
from effnet_cli.core.processor import EfficientNetImageProcessor
from effnet_cli.convert.common import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, preprocessor_config

HUB_STD_SQRT = [0.47853944, 0.4732864, 0.47434163]
LITE = {"mean": (127 / 255,) * 3, "std": (128 / 255,) * 3}


def _hub(side: int) -> dict:
    """google/efficientnet-b*: nearest resize to height/width, no crop, include_top."""
    return {"do_resize": True, "size": {"height": side, "width": side}, "resample": 0, "do_center_crop": False,
            "crop_size": {"height": 289, "width": 289}, "do_rescale": True, "rescale_factor": 1 / 255,
            "rescale_offset": False, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
            "image_std": HUB_STD_SQRT, "include_top": True}


CONFIGS = {
    # efficientnet_pytorch lite (the bundled lite0's own preset) and b*
    "lite0": preprocessor_config(crop=224, resize=256, resample="bilinear", **LITE),
    "effnet_pytorch_b3": preprocessor_config(crop=300, resize=300, resample="bicubic"),
    "hub_b0": _hub(224),
    "hub_b7": _hub(600),
    # timm: floor(size / crop_pct) then crop, bicubic; "squash" resizes both sides
    "timm": preprocessor_config(crop=288, resize=math.floor(288 / 0.875), resample="bicubic",
                                mean=INCEPTION_MEAN, std=INCEPTION_STD),
    "timm_squash": preprocessor_config(crop=240, resize=math.floor(240 / 0.9), resize_mode="exact",
                                       resample="bicubic"),
    "timm_nearest": preprocessor_config(crop=224, resize=256, resample="nearest"),
    # torchvision's weights: resize + crop, bicubic (b0) and bilinear (b1)
    "torchvision_b0": preprocessor_config(crop=224, resize=256, resample="bicubic"),
    "torchvision_b1": preprocessor_config(crop=240, resize=255, resample="bilinear"),
    # Keras: size + 32 then crop, its own Normalization statistics
    "keras": preprocessor_config(crop=224, resize=256, resample="bicubic", mean=[0.48, 0.45, 0.4],
                                 std=[0.23, 0.22, 0.23], rescale_factor=1 / 255),
    # the rest of what the processor accepts
    "tf_offset": preprocessor_config(crop=224, resize=224, resample="bilinear", rescale_factor=1 / 127.5,
                                     rescale_offset=True, mean=(0, 0, 0), std=(1, 1, 1)),
    "lanczos": preprocessor_config(crop=200, resize=230, resample="lanczos", include_top=True),
    "box": preprocessor_config(crop=64, resize=70, resample="box"),
    "hamming": preprocessor_config(crop=64, resize=70, resample="hamming"),
    "crop_bigger_than_resize": {**preprocessor_config(crop=231, resize=200, resize_mode="exact",
                                                      resample="bicubic"), "include_top": False},
    "longest_edge": {**preprocessor_config(crop=96, resample="bilinear"),
                     "size": {"shortest_edge": 80, "longest_edge": 120}, "do_center_crop": False},
    "max_height": {**_hub(1), "size": {"max_height": 90, "max_width": 70}, "resample": 3},
    "no_resize_crop": {**preprocessor_config(crop=50), "do_resize": False},
}


def _generated() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    noise = lambda h, w, c=3: rng.integers(0, 256, (h, w, c), dtype=np.uint8)  # noqa: E731
    images = {
        "odd": Image.fromarray(noise(37, 251)),
        "tall": Image.fromarray(noise(301, 19)),
        "tiny": Image.fromarray(noise(3, 5)),
        "one_pixel": Image.fromarray(noise(1, 1)),
        "small_square": Image.fromarray(noise(45, 45)),
        "grey": Image.fromarray(noise(40, 33, 1)[..., 0], "L"),
        "rgba": Image.fromarray(noise(29, 61, 4), "RGBA"),
        "la": Image.fromarray(noise(30, 30, 2), "LA"),
        "bilevel": Image.fromarray(noise(20, 23, 1)[..., 0] > 127),
        "i16": Image.fromarray((rng.integers(0, 65536, (27, 31))).astype(np.uint16)),
        "cmyk": Image.fromarray(noise(33, 21, 4), "CMYK"),
    }
    palette = Image.fromarray(noise(26, 34)).quantize(16)
    palette.info["transparency"] = 3
    images["palette_transparent"] = palette
    images["palette"] = Image.fromarray(noise(26, 34)).convert("P")
    return images


GENERATED = _generated()


def _close(pipeline: PixelPipeline, processor: EfficientNetImageProcessor, image: Image.Image) -> None:
    want = processor.preprocess_pil(image).numpy()
    got = pipeline(image)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.shape == want.shape
    assert float(np.abs(got - want).max(initial=0.0)) <= 1e-6


@pytest.fixture(scope="module")
def photo_images(photos) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in photos]


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_equal_to_the_processor(name, backend, photo_images):
    processor = EfficientNetImageProcessor.from_dict(CONFIGS[name], backend=backend)
    pipeline = PixelPipeline.from_processor(processor)
    for image in [*photo_images, *GENERATED.values()]:
        _close(pipeline, processor, image)
    assert pipeline.input_size == processor.input_size
    for w, h in [(4000, 3000), (640, 480), (300, 200), (10, 10)]:
        assert pipeline.draft_size(w, h) == processor.draft_size(w, h)


def test_bundled_lite0_and_its_json(photo_images, tmp_path):
    from effnet_cli import load_pretrained

    processor = load_pretrained("lite0")[1]
    processor.save_pretrained(tmp_path)
    from_json = json.loads((tmp_path / "preprocessor_config.json").read_text())
    for pipeline in (PixelPipeline.from_processor(processor), PixelPipeline.from_processor(from_json)):
        assert pipeline.input_size == (224, 224)
        for image in [*photo_images, GENERATED["odd"], GENERATED["rgba"]]:
            _close(pipeline, processor, image)


def test_decoded_jpeg_of_every_mode(photo_images):
    """JPEG-decoded grey and CMYK (the loader's inputs) too, not only arrays made in memory."""
    processor = EfficientNetImageProcessor.from_dict(CONFIGS["torchvision_b0"])
    pipeline = PixelPipeline.from_processor(processor.to_dict())
    for mode in ("L", "CMYK", "RGB"):
        buffer = io.BytesIO()
        photo_images[0].convert(mode).save(buffer, "JPEG", quality=80)
        _close(pipeline, processor, Image.open(io.BytesIO(buffer.getvalue())))


def test_kernels_bit_for_bit_against_torch():
    """The resize alone, on noise (which shows every rounding), many size pairs, up and down."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF

    rng = np.random.default_rng(3)
    modes = {2: InterpolationMode.BILINEAR, 3: InterpolationMode.BICUBIC, 1: InterpolationMode.LANCZOS,
             0: InterpolationMode.NEAREST_EXACT}
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        for out_h, out_w in [(224, 224), (h + 1, max(1, w - 1)), (int(rng.integers(1, 600)), 7)]:
            for code, mode in modes.items():
                want = tvF.resize(tensor, [out_h, out_w], interpolation=mode, antialias=True).permute(1, 2, 0).numpy()
                if code == 0:
                    got = pixels[_nearest_exact_index(h, out_h)[:, None], _nearest_exact_index(w, out_w)[None, :]]
                else:
                    got = _resize_torch_aa(pixels.transpose(2, 0, 1), out_h, out_w, code).transpose(1, 2, 0)
                assert np.array_equal(got, want), (mode, (h, w), (out_h, out_w))


def test_refuses_torchvision_bilinear_where_torch_resizes_in_float(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    with pytest.raises(UnsupportedPreprocessing):
        PixelPipeline.from_processor(CONFIGS["lite0"])
    PixelPipeline.from_processor(CONFIGS["lite0"], backend="pil")  # Pillow's numbers: no torch involved
    PixelPipeline.from_processor(CONFIGS["torchvision_b0"])  # torch's uint8 bicubic is the same integers everywhere


def test_pickles_and_refuses_bad_values():
    import pickle

    pipeline = PixelPipeline.from_processor(CONFIGS["timm"])
    clone = pickle.loads(pickle.dumps(pipeline))
    image = GENERATED["odd"]
    assert np.array_equal(clone(image), pipeline(image))
    from effnet_cli.errors import ConfigError, InputError

    with pytest.raises(ConfigError):
        PixelPipeline.from_processor({**CONFIGS["timm"], "size": {"longest_edge": 3}})
    with pytest.raises(ConfigError):
        PixelPipeline.from_processor(CONFIGS["timm"], backend="cv2")
    with pytest.raises(InputError):
        pipeline(np.zeros((4, 4, 3), dtype=np.uint8))


def test_no_torch_in_the_process(photos):
    """Importing and running it leaves torch and torchvision out of sys.modules."""
    code = (
        "import sys, json\n"
        "from PIL import Image\n"
        "from effnet_cli.core.numpy_pixels import PixelPipeline\n"
        f"config = json.loads({json.dumps(json.dumps(CONFIGS['lite0']))})\n"
        f"pixels = PixelPipeline.from_processor(config)(Image.open({str(photos[0])!r}))\n"
        "assert pixels.shape == (3, 224, 224)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
