"""EfficientNet configuration: the reference's config.json fields, their labels, and the derived shapes.

`EfficientNetConfig` reads and writes the same ``config.json`` as Hugging Face
transformers' ``EfficientNetConfig``. The reference keeps the architecture as six
parallel lists; the model never indexes those directly. It asks for
:meth:`EfficientNetConfig.stages` / :meth:`EfficientNetConfig.blocks`, typed rows
derived once, after compound scaling.

The scaling rules and the typed rows are in :mod:`effnet_cli.core.scaling`, the
field checks in :mod:`effnet_cli.core.validation`, the published variants in
:mod:`effnet_cli.weights.variants`; their names are re-exported here.
``from_pretrained`` / ``save_pretrained`` come from :mod:`effnet_cli.core.hub_mixin`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from effnet_cli.core.dtypes import dtype_name
from effnet_cli.core.hub_mixin import (
    CONFIG_LOADER_KWARGS,
    Located,
    PretrainedMixin,
    read_json,
    split_from_dict_kwargs,
)
from effnet_cli.core.scaling import (  # noqa: F401 - re-exported: the config's vocabulary
    ALPHA,
    BASE_STAGES,
    BETA,
    GAMMA,
    HEAD_CHANNELS,
    BlockSpec,
    StageSpec,
    blocks_of,
    compound_coefficients,
    odd_stride2_blocks,
    round_filters,
    round_repeats,
    tf_same_padding,
)
from effnet_cli.core.validation import ACTIVATIONS, PADDING_MODES, POOLING_TYPES, check_int, validate_config  # noqa: F401
from effnet_cli.errors import ConfigError
from effnet_cli.weights.files import CONFIG_NAME
from effnet_cli.weights.presets import imagenet_labels
from effnet_cli.weights.variants import VARIANTS, Variant  # noqa: F401 - re-exported for callers of the config


@dataclass(init=False)
class EfficientNetConfig(PretrainedMixin):
    """The architecture and head of one EfficientNet, as the reference's config.json stores it.

    Defaults are the reference's (an EfficientNet-B7 body with a 2-label head).
    Use :meth:`from_variant` for the published models.
    """

    num_channels: int = 3  # input channels; 3 for RGB photos
    image_size: int = 600  # native resolution; the model runs at any size, this picks the preprocessing
    width_coefficient: float = 2.0  # compound scaling of channels (β^φ)
    depth_coefficient: float = 3.1  # compound scaling of blocks per stage (α^φ)
    depth_divisor: int = 8  # channel counts stay multiples of this, for fast kernels
    kernel_sizes: list[int] = field(default_factory=lambda: list(BASE_STAGES["kernel_sizes"]))  # depthwise kernel per stage
    in_channels: list[int] = field(default_factory=lambda: list(BASE_STAGES["in_channels"]))  # unscaled stage input widths
    out_channels: list[int] = field(default_factory=lambda: list(BASE_STAGES["out_channels"]))  # unscaled stage output widths
    depthwise_padding: list[int] = field(default_factory=list)  # "fixed" padding: blocks whose stride-2 input is odd
    strides: list[int] = field(default_factory=lambda: list(BASE_STAGES["strides"]))  # stride of each stage's first block
    num_block_repeats: list[int] = field(default_factory=lambda: list(BASE_STAGES["num_block_repeats"]))  # unscaled blocks per stage
    expand_ratios: list[int] = field(default_factory=lambda: list(BASE_STAGES["expand_ratios"]))  # inverted-bottleneck widening
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
    family_name: ClassVar[str] = "EfficientNet"  # how errors name the family
    _ready: ClassVar[bool] = False  # set per instance once __post_init__ is done: assignments then keep labels consistent

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Set each field from ``args`` (in field order) or ``kwargs``, the default otherwise, then validate.

        As in transformers, keyword arguments the config does not know become attributes:
        they are kept in :attr:`extra` and written back to config.json.

        Raises:
            ConfigError: a value cannot build a model, or ``model_type`` is not ``efficientnet``.
            TypeError: too many positional arguments, or one given twice.
        """
        names = [f.name for f in fields(type(self))]
        if len(args) > len(names):
            raise TypeError(f"EfficientNetConfig takes at most {len(names)} positional arguments ({len(args)} given).")
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"EfficientNetConfig got multiple values for argument {name!r}.")
            kwargs[name] = value
        known = type(self)._field_names()
        unknown = _unknown_keys({k: kwargs.pop(k) for k in list(kwargs) if k not in known}, type(self).model_type)
        for f in fields(self):
            value = kwargs[f.name] if f.name in kwargs else (
                f.default_factory() if f.default_factory is not MISSING else f.default)
            object.__setattr__(self, f.name, value)
        self.__post_init__()
        self.extra.update(unknown)

    @classmethod
    @functools.cache
    def _field_names(cls) -> frozenset[str]:
        # Per class: a subclass (EfficientNetV2Config) adds fields of its own.
        return frozenset(f.name for f in fields(cls))

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
        if name in type(self)._field_names() or name.startswith("_") or hasattr(type(self), name):
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
            check_int("num_labels", value, minimum=0)
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
        validate_config(self)

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
        return blocks_of(self.stages(), drop_connect_rate=self.drop_connect_rate,
                         depthwise_padding=self.depthwise_padding)

    @property
    def num_hidden_layers(self) -> int:
        """What the reference stores as ``num_hidden_layers`` (four layers per unscaled block)."""
        return sum(self.num_block_repeats) * 4

    def odd_stride2_blocks(self, image_size: int | None = None) -> list[int]:
        """Indices of stride-2 blocks whose input is odd at ``image_size`` (default: the native size).

        These are the blocks where TF-'same' pads symmetrically; the reference
        stores them as ``depthwise_padding`` for the native size.
        """
        return odd_stride2_blocks(self.blocks(), self.image_size if image_size is None else image_size)

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
        return cls._published(values, overrides)

    @classmethod
    def _published(cls, values: dict[str, Any], overrides: dict[str, Any]) -> EfficientNetConfig:
        """A config from a variant's values and the caller's overrides, with the reference's fixed padding."""
        config = cls(**{**values, **overrides})
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
        depth, width, size = compound_coefficients(phi, base_resolution)
        values: dict[str, Any] = dict(
            width_coefficient=width,
            depth_coefficient=depth,
            image_size=size,
            dropout_rate=min(0.2 + 0.05 * phi, 0.5),
            id2label=dict(enumerate(imagenet_labels())),
        )
        return cls._published(values, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> EfficientNetConfig | tuple[EfficientNetConfig, dict]:
        """Build from a parsed config.json; its unknown keys are kept in :attr:`extra`.

        ``kwargs`` as in transformers: those naming a config field (or a key of ``data``) are
        assigned afterwards (``num_labels=3`` resizes the labels); ``dtype``/``torch_dtype`` are
        kept unless ``"auto"``; any other keyword, loader options included (``_from_auto``,
        ``revision``…), is never stored, and is returned beside the config with
        ``return_unused_kwargs=True``.
        """
        config = cls._from_json_data(data)
        applied, unused, return_unused = split_from_dict_kwargs(
            kwargs, lambda key: key in cls._field_names() - {"extra"} or key in config.extra or key in ("dtype", "torch_dtype"),
            _CONSUMED_KWARGS)
        for key, value in applied.items():
            if key not in ("dtype", "torch_dtype"):
                setattr(config, key, value)
            elif value != "auto":  # "auto" means "the checkpoint's own", which is already there
                config.extra["dtype"] = dtype_name(value)
        return (config, unused) if return_unused else config

    @classmethod
    def _from_json_data(cls, data: dict[str, Any]) -> EfficientNetConfig:
        """The config a parsed config.json describes, with a :class:`ConfigError` for wrong content."""
        if not isinstance(data, dict):
            raise ConfigError(f"A config must be a JSON object, got {type(data).__name__}.")
        if data.get("model_type", cls.model_type) != cls.model_type:
            raise ConfigError(f"model_type is {data['model_type']!r}: not an {cls.family_name} config.")
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
        """Read a config.json written by transformers or by effnet.

        Raises:
            ConfigFileError: the file is missing or not readable JSON (also an ``OSError``).
            ConfigError: it holds a bad value.
        """
        return cls._from_json_data(read_json(path, "config file", "a readable JSON config"))

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

    def to_diff_dict(self) -> dict[str, Any]:
        """What config.json holds: :meth:`to_dict` less the keys at transformers' base-config defaults.

        transformers' rule: every EfficientNet key is kept (the base class has none of them), the
        keys every transformers config has (``id2label``/``label2id`` of the default 2-label head,
        ``return_dict``…) only where they differ from the default, ``_name_or_path`` never.
        """
        return {key: value for key, value in self.to_dict().items()
                if key != "_name_or_path" and not (key in _BASE_DEFAULTS and value == _BASE_DEFAULTS[key])}

    def to_json_string(self, use_diff: bool = True) -> str:
        """config.json text, sorted, indented and ASCII-escaped like transformers writes it.

        ``use_diff=True`` (the default, what ``save_pretrained`` writes) gives :meth:`to_diff_dict`,
        ``use_diff=False`` the whole :meth:`to_dict`.
        """
        try:
            return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"
        except TypeError as exc:
            raise ConfigError(f"The config holds a value JSON cannot store: {exc}.") from None

    def to_json_file(self, path: str | Path, use_diff: bool = True) -> None:
        """Write config.json atomically (through :mod:`effnet_cli.output`)."""
        from effnet_cli.output import write_text

        write_text(path, self.to_json_string(use_diff))

    # ------------------------------------------------- from/save_pretrained
    pretrained_file: ClassVar[str] = CONFIG_NAME
    loader_kwargs: ClassVar[frozenset[str]] = CONFIG_LOADER_KWARGS

    @classmethod
    def _from_located(cls, located: Located, **kwargs: Any) -> EfficientNetConfig | tuple[EfficientNetConfig, dict]:
        """:meth:`from_pretrained`: read config.json, then handle ``kwargs`` as :meth:`from_dict` does
        (``num_labels=3`` resizes the labels; ``return_unused_kwargs``)."""
        return cls.from_dict(read_json(located.file, "config file", "a readable JSON config"), **kwargs)

    def _save_files(self, directory: Path) -> None:
        """:meth:`save_pretrained`: write ``config.json``."""
        self.to_json_file(directory / CONFIG_NAME)


# transformers' PreTrainedConfig defaults (5.x) of the keys effnet writes: to_diff_dict leaves a key out at its default.
_BASE_DEFAULTS: dict[str, Any] = {
    "architectures": None, "output_hidden_states": False, "return_dict": True, "dtype": None,
    "chunk_size_feed_forward": 0, "is_encoder_decoder": False, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "problem_type": None, "output_attentions": False,
}
# Keywords from_dict consumes without storing: transformers' telemetry, and options a convnet has no use for.
_CONSUMED_KWARGS = frozenset({"_from_auto", "_from_pipeline", "_commit_hash", "attn_implementation",
                              "experts_implementation", "output_attentions", "name_or_path"})
# Written to config.json only when set to something else than their default.
_WRITTEN_WHEN_CHANGED = frozenset({"padding_mode", "use_squeeze_excite", "fix_stem_and_head",
                                   "output_hidden_states", "return_dict"})


def _unknown_keys(unknown: dict[str, Any], model_type: str = "efficientnet") -> dict[str, Any]:
    """The constructor's unknown keyword arguments as :attr:`EfficientNetConfig.extra` keeps them."""
    unknown.pop("num_hidden_layers", None)  # derived from num_block_repeats
    if unknown.get("model_type", model_type) != model_type:
        raise ConfigError(f"model_type is {unknown['model_type']!r}, not {model_type!r}.")
    unknown.pop("model_type", None)
    if "torch_dtype" in unknown:  # transformers' older spelling
        unknown.setdefault("dtype", unknown.pop("torch_dtype"))
    if "dtype" in unknown:
        unknown["dtype"] = dtype_name(unknown["dtype"])
    return unknown
