"""EfficientNet image preprocessing, numerically identical to Hugging Face transformers.

:class:`EfficientNetImageProcessor` reads and writes the same ``preprocessor_config.json``
as transformers' ``EfficientNetImageProcessor`` and produces the same ``pixel_values``,
without importing transformers (only torch, torchvision, numpy and PIL).

The steps, in the reference's order::

    image -> RGB -> resize -> center crop (zero padded) -> * rescale_factor [- 1]
          -> (x - mean) / std -> [/ std again when include_top]

transformers 5 ships two implementations of these steps, and they do not give the
same numbers: ``EfficientNetImageProcessor`` (torchvision kernels, what
``AutoImageProcessor`` and ``pipeline`` load) and ``EfficientNetImageProcessorPil``
(PIL/numpy, the semantics of the transformers 4 processor). ``backend`` picks which one
is reproduced exactly; the default is ``"torchvision"``. The differences between the two
(nearest-neighbour sampling, bilinear/bicubic rounding, where zero padding goes) are
measured in docs/preprocessing.md.

Everything after the resize is one multiply-add per pixel with per-channel constants,
and :meth:`EfficientNetImageProcessor.preprocess_pil` is the single-image path the
data-loading workers call; it runs the same code as ``__call__``
(``preprocess_pil`` -> ``_process_one`` -> the steps in :mod:`effnet_cli.core.pixels`).

The fields, their defaults and validation live in :mod:`effnet_cli.core.image_fields`
(no torch there). This module imports torch and torchvision only when an image is first
preprocessed, so reading, writing and comparing processor configs does not load them.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from effnet_cli.core.image_fields import (
    DEFAULTS,
    IMAGE_PROCESSOR_TYPE,
    PARSERS,
    PREPROCESSOR_CONFIG_NAME,
    Backend,
    is_int,
    draft_size,
    parse_bool,
    resize_target,
)
from effnet_cli.core.hub_mixin import Located, PretrainedMixin
from effnet_cli.errors import ConfigError, InputError

if TYPE_CHECKING:  # torch and the pixel operations load on the first preprocessing call
    import torch

    from effnet_cli.core.pixels import ImageLike

__all__ = [
    "PREPROCESSOR_CONFIG_NAME",
    "BatchFeature",
    "EfficientNetImageProcessor",
]


# --------------------------------------------------------------------------------------
# Output container
# --------------------------------------------------------------------------------------


class BatchFeature(dict):
    """The result of preprocessing: a dict with ``"pixel_values"``, also readable as an attribute.

    Mirrors transformers' ``BatchFeature`` closely enough that ``model(**processor(images))``
    and ``processor(images).pixel_values`` work the same way.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Move (or cast) every tensor value, like ``torch.Tensor.to``; other values are kept."""
        import torch

        return BatchFeature(
            {key: val.to(*args, **kwargs) if isinstance(val, torch.Tensor) else val for key, val in self.items()}
        )


# --------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------


class EfficientNetImageProcessor(PretrainedMixin):
    """Turns images into the ``pixel_values`` an EfficientNet checkpoint expects.

    The fields and defaults are those of transformers' ``EfficientNetImageProcessor`` and
    travel with the weights as ``preprocessor_config.json``. Assigning a field validates it
    like the constructor does. ``backend`` chooses which transformers implementation is
    reproduced exactly (``"torchvision"``: ``EfficientNetImageProcessor``, the default;
    ``"pil"``: ``EfficientNetImageProcessorPil``); it is a runtime choice and, as in
    transformers, not written to the file.

    ``do_convert_rgb`` has the reference's meaning and default (None, i.e. off): PIL images
    of other modes are then read as they are (palette indices, 0/1 bilevel pixels, 16-bit
    levels); with True they are converted to RGB first (transparency over white). The
    command line's loader always converts (see :meth:`preprocess_pil`).

    Keys this class does not know (``processor_class``, …) are kept so that :meth:`to_dict`
    gives them back; they do not change the numbers.
    """

    do_resize: bool  # resize to `size` first; off, images keep their size (then crop or not)
    size: dict[str, int]  # {"height","width"} stretches; shortest_edge(+longest_edge), max_height/max_width keep aspect
    resample: int  # PIL filter code: 0 nearest (the hub configs), 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming
    do_center_crop: bool  # cut crop_size out of the middle after resizing; zero padding where the image is smaller
    crop_size: dict[str, int]  # {"height","width"} of the crop
    do_rescale: bool  # multiply by rescale_factor: 0..255 -> 0..1 with 1/255
    rescale_factor: float  # 1/255, or 1/127.5 with rescale_offset for [-1, 1]
    rescale_offset: bool  # subtract 1 after rescaling (x * factor - 1)
    do_normalize: bool  # (x - image_mean) / image_std per channel
    image_mean: tuple[float, float, float]  # RGB means in the rescaled range
    image_std: tuple[float, float, float]  # RGB stds; the hub files store sqrt(ImageNet std), see include_top
    include_top: bool  # divide by image_std once more (Keras EfficientNet's extra rescaling layer)
    do_convert_rgb: bool | None  # convert PIL images to RGB first; None/False reads their values as they are
    backend: str  # "torchvision" or "pil": which transformers implementation to match exactly

    def __init__(
        self,
        *,
        do_resize: bool | None = None,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int | None = None,
        do_center_crop: bool | None = None,
        crop_size: int | Sequence[int] | Mapping[str, int] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        rescale_offset: bool | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        include_top: bool | None = None,
        do_convert_rgb: bool | None = None,
        backend: Backend = "torchvision",
        default_to_square: bool = True,
        **extra: Any,
    ) -> None:
        """Validate and store the fields; ``None`` means the reference default, as in transformers.

        ``default_to_square=False`` makes an integer ``size`` mean the shortest edge (as in
        the reference); it only affects how ``size`` is read and is not stored.

        Raises:
            ConfigError: a value is of the wrong type or out of range; the message names the field.
        """
        given = {
            "do_resize": do_resize,
            "size": size,
            "resample": resample,
            "do_center_crop": do_center_crop,
            "crop_size": crop_size,
            "do_rescale": do_rescale,
            "rescale_factor": rescale_factor,
            "rescale_offset": rescale_offset,
            "do_normalize": do_normalize,
            "image_mean": image_mean,
            "image_std": image_std,
            "include_top": include_top,
            "do_convert_rgb": do_convert_rgb,
        }
        if is_int(size) and not parse_bool("default_to_square", default_to_square):
            given["size"] = {"shortest_edge": int(size)}
        for name, value in given.items():
            setattr(self, name, value)
        self.backend = backend
        # The type is ours to write (always EfficientNetImageProcessor); a stored "...Pil" would not round-trip.
        extra.pop("image_processor_type", None)
        object.__setattr__(self, "_extra", copy.deepcopy(extra))

    def __setattr__(self, name: str, value: Any) -> None:
        # Every assignment goes through the same validation as the constructor, so a
        # processor is never half-valid; None restores the default, as in the reference.
        parse = PARSERS.get(name)
        if parse is not None:
            value = copy.deepcopy(DEFAULTS[name]) if value is None and name in DEFAULTS else parse(name, value)
        object.__setattr__(self, name, value)

    # ---------------------------------------------------------------- serialisation

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content: every field, the kept extra keys and the type."""
        config = copy.deepcopy(self._extra)
        config.update(
            {
                "crop_size": dict(self.crop_size),
                "do_center_crop": self.do_center_crop,
                "do_normalize": self.do_normalize,
                "do_rescale": self.do_rescale,
                "do_resize": self.do_resize,
                "image_mean": list(self.image_mean),
                "image_processor_type": IMAGE_PROCESSOR_TYPE,
                "image_std": list(self.image_std),
                "include_top": self.include_top,
                "resample": self.resample,
                "rescale_factor": self.rescale_factor,
                "rescale_offset": self.rescale_offset,
                "size": dict(self.size),
            }
        )
        if self.do_convert_rgb is not None:  # the reference writes it only when set
            config["do_convert_rgb"] = self.do_convert_rgb
        return config

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> EfficientNetImageProcessor:
        """Build from a ``preprocessor_config.json`` dict; ``overrides`` (e.g. ``backend="pil"``) win.

        Raises:
            ConfigError: the dict is not a mapping or holds a bad value.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"An image processor config must be a JSON object, got {type(config).__name__}.")
        return cls(**{**config, **overrides})

    def to_json_string(self) -> str:
        """The JSON text transformers writes: sorted keys, two-space indent, final newline."""
        try:
            return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        except TypeError as error:
            raise ConfigError(f"The image processor config holds a value JSON cannot store: {error}.") from error

    def to_json_file(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json_string` to ``path`` atomically (a reader never sees half a file)."""
        path = Path(path)
        text = self.to_json_string()
        from effnet_cli.output import write_text

        write_text(path, text)
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str], **overrides: Any) -> EfficientNetImageProcessor:
        """Read a ``preprocessor_config.json``.

        Raises:
            ConfigError: the file is not valid JSON or holds a bad value.
            OSError: the file cannot be read.
        """
        text = Path(path).read_text(encoding="utf-8")
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from error
        return cls.from_dict(config, **overrides)

    # from_pretrained / save_pretrained come from PretrainedMixin; these are its two hooks.
    pretrained_file = PREPROCESSOR_CONFIG_NAME

    @classmethod
    def _from_located(cls, located: Located, **overrides: Any) -> EfficientNetImageProcessor:
        """:meth:`from_pretrained`: read ``preprocessor_config.json`` (or the file given); ``overrides`` win."""
        return cls.from_json_file(located.file, **overrides)

    def _save_files(self, directory: Path) -> list[str]:
        """:meth:`save_pretrained`: write ``preprocessor_config.json``; returns the files written, as transformers does."""
        return [str(self.to_json_file(directory / PREPROCESSOR_CONFIG_NAME))]

    def replace(self, **changes: Any) -> EfficientNetImageProcessor:
        """A copy with some fields changed (validated), keeping the backend unless it is changed too."""
        return type(self).from_dict(self.to_dict(), **{"backend": self.backend, **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EfficientNetImageProcessor):
            return NotImplemented
        return self.backend == other.backend and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, so not hashable

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}) {self.to_json_string()}"

    # ---------------------------------------------------------------- sizes

    def resize_target(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to, with the reference's integer rounding."""
        return resize_target(self.size, height, width)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(height, width) of every output image, or None when it depends on the input's size.

        The crop size when cropping, else the resize size; None for aspect-preserving
        sizes (shortest_edge, max_height/max_width) without a crop, or with resizing off.
        """
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if self.do_resize and "height" in self.size:
            return self.size["height"], self.size["width"]
        return None

    def draft_size(self, orig_w: int, orig_h: int) -> tuple[int, int] | None:
        """The (width, height) to pass to ``PIL.Image.draft`` for a JPEG of ``orig_w × orig_h``, or None.

        JPEG decoders can decode at 1/2, 1/4 or 1/8 scale for much less work. PIL's
        ``draft(mode, (w, h))`` picks the largest such scale that keeps the decoded image at
        least ``w × h``, so we ask for exactly the resize target: the decoder never goes below
        the size the resize needs. None when no reduction is possible (the image is less than
        twice the target on one side) or when resizing is off (the output would change size).

        Decoding at reduced size changes the pixels slightly (the DCT does part of the
        downscaling), so this is an opt-in speed-up for the loader; ``__call__`` never does it.
        """
        return draft_size(self.size, self.do_resize, orig_w, orig_h)

    # ---------------------------------------------------------------- preprocessing

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocess an image or a list of images; see :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self,
        images: ImageLike | Sequence[ImageLike],
        return_tensors: str | None = "pt",
        *,
        input_data_format: str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Images -> ``BatchFeature(pixel_values=N×3×H×W float32)``.

        Args:
            images: a PIL image, a numpy array or torch tensor (H×W, H×W×C or C×H×W with
                C = 1, 3 or 4; uint8, other integers in 0..255, or floats), a 4-d batch
                array, or a (nested) list of those. Grey, palette and alpha images become RGB
                as in the reference (transparency over white). Floats follow the reference:
                they are rescaled too when ``do_rescale`` is on, so pass ``do_rescale=False``
                for images already in [0, 1].
            return_tensors: ``"pt"`` (torch, the default here) or ``"np"``/``None`` (numpy).
                When sizes differ (aspect-preserving sizes without a crop), ``"pt"``/``"np"``
                raise and ``None`` gives a list of 3×H×W arrays.
            input_data_format: ``"channels_first"`` or ``"channels_last"`` for arrays whose
                layout cannot be guessed (e.g. 3×H×3).
            overrides: fields to change for this call only, e.g. ``do_center_crop=True`` or
                ``do_convert_rgb=True``.

        Raises:
            InputError: an image cannot be used (type, shape, value range) or return_tensors is unknown.
            ConfigError: an override has a bad value.
        """
        if return_tensors not in ("pt", "np", None):
            raise InputError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        unknown = sorted(set(overrides) - set(PARSERS))
        if unknown:
            raise InputError(f"Unknown preprocessing option(s) {unknown}; the options are {sorted(PARSERS)}.")
        import torch

        from effnet_cli.core import pixels as ops

        processor = self.replace(**overrides) if overrides else self
        outputs = [processor._process_one(image, input_data_format) for image in ops.flatten_images(images)]
        shapes = {tuple(output.shape) for output in outputs}
        if len(shapes) > 1:
            if return_tensors is not None:
                raise InputError(
                    f"The images come out in different sizes {sorted(shapes)}, so they cannot be stacked; "
                    "use a height/width size or a center crop, or return_tensors=None."
                )
            return BatchFeature(pixel_values=[output.numpy() for output in outputs])
        pixel_values = torch.stack(outputs)
        return BatchFeature(pixel_values=pixel_values if return_tensors == "pt" else pixel_values.numpy())

    def preprocess_pil(self, image: Image.Image) -> torch.Tensor:
        """One decoded PIL image -> 3×H×W float32 tensor: the data-loading workers' path.

        The same numbers as ``self(image).pixel_values[0]`` (it is the same code, without
        the batching): resize on 8-bit pixels, then crop and one multiply-add per pixel with
        precomputed per-channel constants. Unlike ``__call__`` it always converts to RGB
        (the reference's ``do_convert_rgb=True``), whatever ``do_convert_rgb`` says: the
        command line classifies photos, never palette indices.
        """
        if not isinstance(image, Image.Image):
            raise InputError(f"preprocess_pil takes a PIL image, got {type(image).__name__}.")
        return self._process_one(image, None, to_rgb=True)

    def _process_one(self, image: ImageLike, data_format: str | None, to_rgb: bool = False) -> torch.Tensor:
        """The whole pipeline for one image, in the reference's order (the steps are in core/pixels.py)."""
        import torch

        from effnet_cli.core import pixels as ops

        if isinstance(image, Image.Image) and image.mode != "RGB" and not (to_rgb or self.do_convert_rgb):
            pixels: Image.Image | torch.Tensor = ops.pil_as_is(image, self.backend)
        elif isinstance(image, Image.Image):
            pixels = ops.pil_to_rgb(image)
        else:
            pixels = ops.array_to_rgb(image, data_format, self.backend)
            if pixels.is_floating_point() and self.do_rescale and ops.in_unit_range(pixels):
                warnings.warn(
                    "The image is float in [0, 1] and do_rescale is on, so it is rescaled a second time "
                    "(as transformers does); pass do_rescale=False if it is already rescaled.",
                    UserWarning,
                    stacklevel=4,
                )
        if self.do_resize:
            height, width = self.resize_target(*ops.image_hw(pixels))
            resize = ops.resize_with_pil if self.backend == "pil" else ops.resize_with_torchvision
            pixels = resize(pixels, height, width, self.resample)
        elif isinstance(pixels, Image.Image):
            pixels = ops.pil_to_tensor(pixels)
        if self.do_center_crop:
            pixels = ops.center_crop(
                pixels, self.crop_size["height"], self.crop_size["width"], pad_ceil=self.backend == "pil"
            )
        scale, shift = ops.affine_coefficients(
            self.do_rescale,
            self.rescale_factor,
            self.rescale_offset,
            self.do_normalize,
            self.image_mean,
            self.image_std,
            self.include_top,
        )
        # One pass over the pixels, into a fresh contiguous C×H×W buffer (the input may be a view).
        out = pixels.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if out.shape[0] == 1:  # one channel read as is: normalising broadcasts it to three, as in the reference
            return out * scale + shift
        return out.mul_(scale).add_(shift)
