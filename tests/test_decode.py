"""Fast decoding, the default of ``classify``: what it changes, with the bundled Lite0's real weights.

Reduced-size JPEG decoding (Pillow's draft, no smaller than 1.5x the resize target) keeps the top-1
of every sample photo and stays close to exact decoding. The alternatives measured against it
(simplejpeg's scaled decode, resizing only the crop region, other margins) are in the benchmark
(benchmarks/decoders.py; the "Fast decoding" table of docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from effnet_cli.data import open_image

pytestmark = pytest.mark.usefixtures("one_thread")


def _levels(tensor: torch.Tensor, processor) -> torch.Tensor:
    """Preprocessed pixels back in 8-bit levels (undo the per-channel multiply-add)."""
    from effnet_cli.core.pixels import affine_coefficients

    scale, shift = affine_coefficients(processor.do_rescale, processor.rescale_factor, processor.rescale_offset,
                                       processor.do_normalize, processor.image_mean, processor.image_std,
                                       processor.include_top)
    return (tensor - shift) / scale



@pytest.fixture(scope="module")
def lite0():
    from effnet_cli import load_pretrained
    from effnet_cli.errors import EffnetError

    try:
        return load_pretrained("lite0")
    except (EffnetError, ImportError):
        pytest.skip("the bundled Lite0 weights are not installed")


def test_fast_decoding_keeps_top1_of_the_sample_photos_and_stays_close(lite0, photos, tmp_path):
    from effnet_cli.runtime.engine import Engine

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
