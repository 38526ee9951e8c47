"""EfficientNet configuration: the reference's config.json fields, validation and compound scaling.

`EfficientNetConfig` reads and writes the same ``config.json`` as Hugging Face
transformers' ``EfficientNetConfig``. The reference keeps the architecture as six
parallel lists; the model never indexes those directly. It asks for
:meth:`EfficientNetConfig.stages` / :meth:`EfficientNetConfig.blocks`, typed rows
derived once, after compound scaling.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from effnet_cli.errors import ConfigError

# Activation names accepted in ``hidden_act`` (the reference's ACT2FN subset that
# makes sense for a convnet). The model maps each to a torch module.
ACTIVATIONS = ("swish", "silu", "relu", "relu6", "gelu", "gelu_new", "selu", "mish")
POOLING_TYPES = ("mean", "max")
# How convolutions pad. "fixed": the reference's scheme (stem pads right/bottom
# by one, stride-2 depthwise convs pad per ``depthwise_padding``): TF-'same' at the
# native size only. "same": TF-'same' computed from the actual input size, as
# Keras, timm's tf_* models and efficientnet_pytorch do. "symmetric": k//2 on
# every side, as torchvision and timm's own weights do.
PADDING_MODES = ("fixed", "same", "symmetric")

# The published base network (EfficientNet-B0), one entry per stage. Stored as the
# reference's parallel lists because that is the config.json format.
_BASE_STAGES = {
    "kernel_sizes": [3, 3, 5, 3, 5, 5, 3],
    "in_channels": [32, 16, 24, 40, 80, 112, 192],
    "out_channels": [16, 24, 40, 80, 112, 192, 320],
    "strides": [1, 2, 2, 2, 1, 2, 1],
    "num_block_repeats": [1, 2, 2, 3, 3, 4, 1],
    "expand_ratios": [1, 6, 6, 6, 6, 6, 6],
}
_STAGE_LISTS = tuple(_BASE_STAGES)
HEAD_CHANNELS = 1280  # width of the 1x1 head conv before width scaling

# The paper's compound-scaling constants (depth α, width β, resolution γ).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15


@dataclass(frozen=True)
class Variant:
    """One published EfficientNet: its scaling and the numbers the paper reports."""

    name: str
    width_coefficient: float
    depth_coefficient: float
    image_size: int
    dropout_rate: float
    top1: float  # ImageNet top-1 (%) as published (paper for B, TF-Lite README for Lite)
    lite: bool = False

    @property
    def hub_id(self) -> str | None:
        """The Hugging Face hub repository of the official weights, when there is one."""
        return None if self.lite else f"google/efficientnet-{self.name}"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("b0", 1.0, 1.0, 224, 0.2, 77.1),
        Variant("b1", 1.0, 1.1, 240, 0.2, 79.1),
        Variant("b2", 1.1, 1.2, 260, 0.3, 80.1),
        Variant("b3", 1.2, 1.4, 300, 0.3, 81.6),
        Variant("b4", 1.4, 1.8, 380, 0.4, 82.9),
        Variant("b5", 1.6, 2.2, 456, 0.4, 83.6),
        Variant("b6", 1.8, 2.6, 528, 0.5, 84.0),
        Variant("b7", 2.0, 3.1, 600, 0.5, 84.3),
        Variant("lite0", 1.0, 1.0, 224, 0.2, 75.1, lite=True),
        Variant("lite1", 1.0, 1.1, 240, 0.2, 76.7, lite=True),
        Variant("lite2", 1.1, 1.2, 260, 0.3, 77.6, lite=True),
        Variant("lite3", 1.2, 1.4, 280, 0.3, 79.8, lite=True),
        Variant("lite4", 1.4, 1.8, 300, 0.3, 81.5, lite=True),
    )
}


def round_filters(channels: int, width_coefficient: float, divisor: int = 8) -> int:
    """Scale a channel count by the width coefficient, to a multiple of ``divisor``.

    Rounds to the nearest multiple but never more than 10% below the scaled value
    (the rule of the TF reference, which every port reproduces).
    """
    scaled = channels * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scale a stage's block count by the depth coefficient, rounding up."""
    return int(math.ceil(depth_coefficient * repeats))


def tf_same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(before, after) zero padding that TF's 'same' adds along one axis of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class StageSpec:
    """One stage of the network after compound scaling."""

    index: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int
    repeats: int


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block, as the model builds it."""

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    kernel_size: int
    expand_ratio: int
    drop_rate: float  # dropout on the residual branch, growing linearly with depth
    residual: bool  # every block but the first of its stage adds its input back
    adjust_padding: bool  # "fixed" mode: stride-2 depthwise pads (k//2-1, k//2), else k//2 each side

    @property
    def expanded_channels(self) -> int:
        """Width of the depthwise conv (input width times the expansion ratio)."""
        return self.in_channels * self.expand_ratio


@lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    from importlib import resources  # imported here: `effnet --help` never needs it

    text = resources.files("effnet_cli.resources").joinpath("imagenet1k_labels.json").read_text("utf-8")
    return tuple(json.loads(text))


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in the index order every checkpoint uses."""
    return list(_imagenet_labels())


@dataclass
class EfficientNetConfig:
    """The architecture and head of one EfficientNet, as the reference's config.json stores it.

    Defaults are the reference's (an EfficientNet-B7 body with a 2-label head).
    Use :meth:`from_variant` for the published models.
    """

    num_channels: int = 3  # input channels; 3 for RGB photos
    image_size: int = 600  # native resolution; the model runs at any size, this picks the preprocessing
    width_coefficient: float = 2.0  # compound scaling of channels (β^φ)
    depth_coefficient: float = 3.1  # compound scaling of blocks per stage (α^φ)
    depth_divisor: int = 8  # channel counts stay multiples of this, for fast kernels
    kernel_sizes: list[int] = field(default_factory=lambda: list(_BASE_STAGES["kernel_sizes"]))  # depthwise kernel per stage
    in_channels: list[int] = field(default_factory=lambda: list(_BASE_STAGES["in_channels"]))  # unscaled stage input widths
    out_channels: list[int] = field(default_factory=lambda: list(_BASE_STAGES["out_channels"]))  # unscaled stage output widths
    depthwise_padding: list[int] = field(default_factory=list)  # "fixed" padding: blocks whose stride-2 input is odd
    strides: list[int] = field(default_factory=lambda: list(_BASE_STAGES["strides"]))  # stride of each stage's first block
    num_block_repeats: list[int] = field(default_factory=lambda: list(_BASE_STAGES["num_block_repeats"]))  # unscaled blocks per stage
    expand_ratios: list[int] = field(default_factory=lambda: list(_BASE_STAGES["expand_ratios"]))  # inverted-bottleneck widening
    squeeze_expansion_ratio: float = 0.25  # squeeze-excite bottleneck, relative to the block input
    hidden_act: str = "swish"  # swish for B0-B7, relu6 for Lite (quantisation friendly)
    hidden_dim: int | None = None  # head width; derived from the width coefficient, kept for config.json
    pooling_type: str = "mean"  # global pooling before the classifier
    initializer_range: float = 0.02  # std of the normal init of conv/linear weights
    batch_norm_eps: float = 1e-3  # TF's default; timm's own weights use 1e-5
    batch_norm_momentum: float = 0.99  # passed to torch as-is, like the reference (eval ignores it)
    dropout_rate: float = 0.5  # before the classifier, in training
    drop_connect_rate: float = 0.2  # residual-branch dropout of the deepest block, in training
    num_labels: int | None = None  # classifier outputs; derived from id2label when that is given
    id2label: dict[int, str] | None = None  # class index -> name, shown in predictions
    label2id: dict[str, int] | None = None  # inverse of id2label
    problem_type: str | None = None  # loss choice, as transformers: regression / single_label / multi_label
    padding_mode: str = "fixed"  # see PADDING_MODES: which padding the weights were trained with
    use_squeeze_excite: bool = True  # Lite drops squeeze-excite (bad for quantisation)
    fix_stem_and_head: bool = False  # Lite keeps stem/head widths and first/last stage depths unscaled
    output_hidden_states: bool = False  # forward's default when the argument is not given, as in transformers
    return_dict: bool = True  # forward's default: an output mapping (True) or a plain tuple (False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown keys, readable as attributes, written back

    model_type: ClassVar[str] = "efficientnet"  # what config.json's "model_type" says
    _ready: ClassVar[bool] = False  # set per instance once __post_init__ is done: assignments then keep labels consistent

    def __post_init__(self) -> None:
        self._normalise_labels()
        self.validate()
        object.__setattr__(self, "_ready", True)

    # ------------------------------------------------------------ attributes
    def __setattr__(self, name: str, value: Any) -> None:
        """Assign a field, keeping the label fields consistent; unknown names are kept in :attr:`extra`.

        As in transformers: ``num_labels = n`` (a new count) resets ``id2label`` to
        ``LABEL_0`` … and ``label2id`` to its inverse; ``id2label = {...}`` sets
        ``num_labels`` (and ``label2id``) from it; any other name becomes an extra
        key that reads back as an attribute and is written to config.json.
        """
        if name in _FIELD_NAMES or name.startswith("_") or hasattr(type(self), name):
            if not self._ready or name not in ("num_labels", "id2label", "label2id"):
                object.__setattr__(self, name, value)
            else:
                self._set_label_field(name, value)
        else:
            self.extra[name] = value

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the unknown keys given to the constructor or read from config.json.
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _set_label_field(self, name: str, value: Any) -> None:
        if name == "num_labels":
            _check_int("num_labels", value, minimum=0)
            if int(value) != len(self.id2label):
                labels = {i: f"LABEL_{i}" for i in range(int(value))}
                object.__setattr__(self, "id2label", labels)
                object.__setattr__(self, "label2id", {v: k for k, v in labels.items()})
            object.__setattr__(self, "num_labels", int(value))
        elif name == "id2label":
            if not isinstance(value, dict):
                raise ConfigError(f"id2label must map integer class indices to names, got {value!r}.")
            try:
                labels = {int(k): str(v) for k, v in value.items()}
            except (TypeError, ValueError):
                raise ConfigError("id2label must map integer class indices to names.") from None
            object.__setattr__(self, "id2label", labels)
            object.__setattr__(self, "num_labels", len(labels))
            object.__setattr__(self, "label2id", {v: k for k, v in labels.items()})
        else:
            if not isinstance(value, dict):
                raise ConfigError(f"label2id must map names to integer class indices, got {value!r}.")
            try:
                object.__setattr__(self, "label2id", {str(k): int(v) for k, v in value.items()})
            except (TypeError, ValueError):
                raise ConfigError("label2id must map names to integer class indices.") from None

    @property
    def use_return_dict(self) -> bool:
        """transformers' older spelling of :attr:`return_dict`."""
        return bool(self.return_dict)

    def update(self, values: dict[str, Any]) -> None:
        """Assign every key of ``values`` as an attribute (labels kept consistent, unknown keys kept)."""
        for key, value in values.items():
            setattr(self, key, value)

    # ----------------------------------------------------------------- labels
    def _normalise_labels(self) -> None:
        if self.id2label is not None:
            try:
                self.id2label = {int(k): str(v) for k, v in dict(self.id2label).items()}
            except (TypeError, ValueError):
                raise ConfigError("id2label must map integer class indices to names.") from None
            if self.num_labels is None:
                self.num_labels = len(self.id2label)
        if self.num_labels is None:
            self.num_labels = 2  # the reference's default head
        if self.id2label is None or len(self.id2label) != self.num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(int(self.num_labels))}
        if self.label2id is None or len(self.label2id) != len(set(self.id2label.values())):
            self.label2id = {name: i for i, name in self.id2label.items()}
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field whose value cannot build a model."""
        _check_int("num_channels", self.num_channels, minimum=1)
        _check_int("image_size", self.image_size, minimum=1)
        _check_number("width_coefficient", self.width_coefficient, positive=True)
        _check_number("depth_coefficient", self.depth_coefficient, positive=True)
        _check_int("depth_divisor", self.depth_divisor, minimum=1)
        lengths = {}
        for name in _STAGE_LISTS:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{name} must be a non-empty list of integers, got {value!r}.")
            for item in value:
                _check_int(name, item, minimum=1, what="every entry of")
            setattr(self, name, [int(v) for v in value])
            lengths[name] = len(value)
        if len(set(lengths.values())) != 1:
            detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
            raise ConfigError(f"The per-stage lists must all have one entry per stage; got lengths {detail}.")
        for k in self.kernel_sizes:
            if k % 2 == 0:
                raise ConfigError(f"kernel_sizes must be odd, got {k}.")
        for s in self.strides:
            if s not in (1, 2):
                raise ConfigError(f"strides must be 1 or 2, got {s}.")
        for i in range(1, len(self.in_channels)):
            if self.in_channels[i] != self.out_channels[i - 1]:
                raise ConfigError(
                    f"in_channels[{i}]={self.in_channels[i]} must equal out_channels[{i - 1}]={self.out_channels[i - 1]}: "
                    "each stage starts where the previous one ends."
                )
        if not isinstance(self.depthwise_padding, (list, tuple)):
            raise ConfigError(f"depthwise_padding must be a list of block indices, got {self.depthwise_padding!r}.")
        for item in self.depthwise_padding:
            _check_int("depthwise_padding", item, minimum=0, what="every entry of")
        self.depthwise_padding = [int(v) for v in self.depthwise_padding]
        _check_number("squeeze_expansion_ratio", self.squeeze_expansion_ratio, positive=True)
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act must be one of {', '.join(ACTIVATIONS)}; got {self.hidden_act!r}.")
        if self.pooling_type not in POOLING_TYPES:
            raise ConfigError(f"pooling_type must be one of {', '.join(POOLING_TYPES)}; got {self.pooling_type!r}.")
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(f"padding_mode must be one of {', '.join(PADDING_MODES)}; got {self.padding_mode!r}.")
        _check_number("initializer_range", self.initializer_range, positive=True)
        _check_number("batch_norm_eps", self.batch_norm_eps, positive=True)
        _check_number("batch_norm_momentum", self.batch_norm_momentum)
        for name in ("dropout_rate", "drop_connect_rate"):
            value = getattr(self, name)
            _check_number(name, value)
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}.")
        _check_int("num_labels", self.num_labels, minimum=0)
        if self.problem_type not in (None, "regression", "single_label_classification", "multi_label_classification"):
            raise ConfigError(f"problem_type {self.problem_type!r} is not one of regression, single_label_classification, multi_label_classification.")
        derived = self.head_channels
        if self.hidden_dim is None:
            self.hidden_dim = derived
        else:
            _check_int("hidden_dim", self.hidden_dim, minimum=1)
            if self.hidden_dim != derived:
                raise ConfigError(
                    f"hidden_dim={self.hidden_dim} disagrees with width_coefficient={self.width_coefficient}, "
                    f"which gives a head of {derived} channels; drop hidden_dim or set it to {derived}."
                )

    # ------------------------------------------------------- derived shapes
    def _filters(self, channels: int) -> int:
        return round_filters(channels, self.width_coefficient, self.depth_divisor)

    @property
    def stem_channels(self) -> int:
        """Output width of the stem conv."""
        return self.in_channels[0] if self.fix_stem_and_head else self._filters(self.in_channels[0])

    @property
    def head_channels(self) -> int:
        """Width of the final 1x1 conv, i.e. of the pooled features (``hidden_dim``)."""
        return HEAD_CHANNELS if self.fix_stem_and_head else self._filters(HEAD_CHANNELS)

    def stages(self) -> list[StageSpec]:
        """The stages after compound scaling: widths rounded, repeats scaled."""
        rows = []
        last = len(self.in_channels) - 1
        for i in range(len(self.in_channels)):
            repeats = self.num_block_repeats[i]
            if not (self.fix_stem_and_head and i in (0, last)):
                repeats = round_repeats(repeats, self.depth_coefficient)
            in_ch = self.stem_channels if i == 0 else self._filters(self.in_channels[i])
            rows.append(
                StageSpec(
                    index=i,
                    kernel_size=self.kernel_sizes[i],
                    stride=self.strides[i],
                    expand_ratio=self.expand_ratios[i],
                    in_channels=in_ch,
                    out_channels=self._filters(self.out_channels[i]),
                    repeats=repeats,
                )
            )
        return rows

    def blocks(self) -> list[BlockSpec]:
        """Every block of the network in order, with its drop rate and padding."""
        stages = self.stages()
        total = sum(s.repeats for s in stages)
        rows: list[BlockSpec] = []
        for stage in stages:
            for j in range(stage.repeats):
                index = len(rows)
                rows.append(
                    BlockSpec(
                        index=index,
                        stage=stage.index,
                        in_channels=stage.in_channels if j == 0 else stage.out_channels,
                        out_channels=stage.out_channels,
                        stride=stage.stride if j == 0 else 1,
                        kernel_size=stage.kernel_size,
                        expand_ratio=stage.expand_ratio,
                        drop_rate=self.drop_connect_rate * index / total,
                        residual=j > 0,
                        adjust_padding=index not in self.depthwise_padding,
                    )
                )
        return rows

    @property
    def num_hidden_layers(self) -> int:
        """What the reference stores as ``num_hidden_layers`` (four layers per unscaled block)."""
        return sum(self.num_block_repeats) * 4

    def odd_stride2_blocks(self, image_size: int | None = None) -> list[int]:
        """Indices of stride-2 blocks whose input is odd at ``image_size``.

        These are the blocks where TF-'same' pads symmetrically; the reference
        stores them as ``depthwise_padding`` for the native size.
        """
        size = self.image_size if image_size is None else image_size
        size = -(-size // 2)  # after the stride-2 stem
        odd = []
        for block in self.blocks():
            if block.stride == 2:
                if size % 2 == 1:
                    odd.append(block.index)
                size = -(-size // 2)
        return odd

    # ---------------------------------------------------------- constructors
    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> EfficientNetConfig:
        """The published settings of ``b0`` … ``b7`` or ``lite0`` … ``lite4``, with the ImageNet-1k head."""
        key = name.lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
        variant = VARIANTS.get(key)
        if variant is None:
            raise ConfigError(f"Unknown variant {name!r}; choose one of {', '.join(VARIANTS)}.")
        labels = imagenet_labels()
        values: dict[str, Any] = dict(
            image_size=variant.image_size,
            width_coefficient=variant.width_coefficient,
            depth_coefficient=variant.depth_coefficient,
            dropout_rate=variant.dropout_rate,
            id2label=dict(enumerate(labels)),
        )
        if variant.lite:
            values.update(hidden_act="relu6", use_squeeze_excite=False, fix_stem_and_head=True, padding_mode="same")
        values.update(overrides)
        config = cls(**values)
        if "depthwise_padding" not in overrides:
            # The reference's table, which is exactly the odd-input stride-2 blocks at the native size.
            config.depthwise_padding = config.odd_stride2_blocks()
        return config

    @classmethod
    def from_compound_scaling(cls, phi: float, *, base_resolution: int = 224, **overrides: Any) -> EfficientNetConfig:
        """A new variant from the compound coefficient φ: depth α^φ, width β^φ, resolution γ^φ.

        The paper's published B1-B7 were hand-rounded from these, so φ=1..7 gives
        close but not identical coefficients.
        """
        if not isinstance(phi, (int, float)) or phi < 0:
            raise ConfigError(f"phi must be a non-negative number, got {phi!r}.")
        depth = round(ALPHA**phi, 2)
        width = round(BETA**phi, 2)
        size = int(round(base_resolution * GAMMA**phi / 8) * 8)
        values: dict[str, Any] = dict(
            width_coefficient=width,
            depth_coefficient=depth,
            image_size=size,
            dropout_rate=min(0.2 + 0.05 * phi, 0.5),
            id2label=dict(enumerate(imagenet_labels())),
        )
        values.update(overrides)
        config = cls(**values)
        if "depthwise_padding" not in overrides:
            config.depthwise_padding = config.odd_stride2_blocks()
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EfficientNetConfig:
        """Build from a parsed config.json; unknown keys are kept in :attr:`extra`."""
        if not isinstance(data, dict):
            raise ConfigError(f"A config must be a JSON object, got {type(data).__name__}.")
        if data.get("model_type", "efficientnet") != "efficientnet":
            raise ConfigError(f"model_type is {data['model_type']!r}: not an EfficientNet config.")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "num_hidden_layers"}
        if isinstance(values.get("image_size"), (list, tuple)) and len(values["image_size"]) in (1, 2):
            values["image_size"] = values["image_size"][0]
        try:
            return cls(**values, extra=extra)
        except TypeError as exc:  # e.g. a list where a number belongs, caught by comparisons
            raise ConfigError(f"config.json has a value of the wrong type: {exc}.") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> EfficientNetConfig:
        """Read a config.json written by transformers or by effnet."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"No config file at {path}.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is not a readable JSON config ({exc}).") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The config.json content; readable by transformers' EfficientNetConfig."""
        out: dict[str, Any] = {"model_type": self.model_type}
        out.update(self.extra)
        for f in fields(self):
            if f.name in ("extra", "num_labels", "id2label", "label2id", "problem_type"):
                continue
            value = getattr(self, f.name)
            # Extensions, and the run-time switches transformers omits at their defaults, are
            # written only when they differ, so a reference model's config stays byte-comparable.
            if f.name in _WRITTEN_WHEN_CHANGED and value == f.default:
                continue
            out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        out["num_hidden_layers"] = self.num_hidden_layers
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        if self.problem_type is not None:
            out["problem_type"] = self.problem_type
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        """config.json text, sorted, indented and ASCII-escaped like transformers writes it.

        ``use_diff`` is accepted for transformers' signature; the text is always the full config.
        """
        try:
            return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        except TypeError as exc:
            raise ConfigError(f"The config holds a value JSON cannot store: {exc}.") from None

    def to_json_file(self, path: str | Path, use_diff: bool = True) -> None:
        """Write config.json atomically (through :mod:`effnet_cli.output`)."""
        from effnet_cli.output import write_text

        write_text(path, self.to_json_string())

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> None:
        """Write ``config.json`` into ``directory`` (created if needed), as transformers does."""
        directory = Path(directory)
        if directory.is_file():
            raise ConfigError(f"{directory} is a file; save_pretrained wants a directory.")
        directory.mkdir(parents=True, exist_ok=True)
        self.to_json_file(directory / "config.json")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool | None = None,
                        **changes: Any) -> EfficientNetConfig:
        """Read the config of a directory, a config.json file, a variant name or a hub id.

        Keyword arguments other than the download options are assigned afterwards
        (``num_labels=3`` resizes the labels, unknown keys are kept), as in transformers.
        """
        path = Path(str(name_or_path)).expanduser()
        if path.is_file():
            config = cls.from_json_file(path)
        else:
            from effnet_cli.hub import resolve_files  # the hub machinery is only needed for names

            directory = path if path.is_dir() else resolve_files(
                name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)[0]
            config = cls.from_json_file(directory / "config.json")
        config.update(changes)
        return config


_FIELD_NAMES = frozenset(f.name for f in fields(EfficientNetConfig))
# Written to config.json only when set to something else than their default.
_WRITTEN_WHEN_CHANGED = frozenset({"padding_mode", "use_squeeze_excite", "fix_stem_and_head",
                                   "output_hidden_states", "return_dict"})
_dataclass_init = EfficientNetConfig.__init__


def _init_accepting_unknown_keys(self: EfficientNetConfig, *args: Any, **kwargs: Any) -> None:
    """The dataclass constructor, plus transformers' rule that unknown keyword arguments become attributes."""
    unknown = {k: kwargs.pop(k) for k in list(kwargs) if k not in _FIELD_NAMES}
    unknown.pop("num_hidden_layers", None)  # derived from num_block_repeats
    if unknown.get("model_type", "efficientnet") != "efficientnet":
        raise ConfigError(f"model_type is {unknown['model_type']!r}: not an EfficientNet config.")
    unknown.pop("model_type", None)
    if "torch_dtype" in unknown:  # transformers' older spelling
        unknown.setdefault("dtype", unknown.pop("torch_dtype"))
    if unknown.get("dtype") is not None and not isinstance(unknown["dtype"], str):
        unknown["dtype"] = str(unknown["dtype"]).removeprefix("torch.")  # JSON-writable, as transformers stores it
    _dataclass_init(self, *args, **kwargs)
    self.extra.update(unknown)


EfficientNetConfig.__init__ = _init_accepting_unknown_keys  # type: ignore[method-assign]


def _check_int(name: str, value: Any, *, minimum: int | None = None, what: str = "") -> None:
    prefix = f"{what} {name}" if what else name
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{prefix.strip()} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{prefix.strip()} must be at least {minimum}, got {value}.")


def _check_number(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}.")
