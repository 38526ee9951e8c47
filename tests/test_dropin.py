"""Drop-in use: the same user-level code on transformers' EfficientNet classes and on effnet's, compared.

Each test runs one snippet of the kind transformers users write (configure, mutate,
run, read outputs, save, load, swap the head, train) once per library, through the
``LIBS`` table, and compares what the user gets. A tiny architecture (width 0.25,
one block per stage, 32-px inputs) keeps the whole file fast.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import effnet_cli
from tests.conftest import randomize as _randomize

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # its load reports go to the log; we compare the returned info

LIBS = {"transformers": transformers, "effnet": effnet_cli}
OTHER = {"transformers": "effnet", "effnet": "transformers"}
# Valid for both classes: transformers needs hidden_dim given, effnet derives the same value.
TINY = dict(width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320, image_size=32, dropout_rate=0.3,
            drop_connect_rate=0.3)


def randomize(model, seed: int):
    """Seeded weights; one block per stage has no residuals, so a slightly larger scale keeps the input's signal."""
    return _randomize(model, seed=seed, scale=1.8)


def _x(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5, scale: torch.Tensor | None = None) -> None:
    """``a`` equals ``b`` within ``rel`` of ``scale`` (default: ``b``'s own largest magnitude)."""
    scale = (b.abs().max() if scale is None else scale).clamp_min(1e-6)
    assert (a - b).abs().max() / scale <= rel, f"max diff {(a - b).abs().max():.3g} vs scale {scale:.3g}"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes and "newly initialised" notices, in both libraries
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A 5-label tiny checkpoint with seeded random weights, saved by effnet (which transformers loads)."""
    config = effnet_cli.EfficientNetConfig(**TINY, id2label={i: f"class{i}" for i in range(5)})
    model = randomize(effnet_cli.EfficientNetForImageClassification(config), seed=3).eval()
    directory = tmp_path_factory.mktemp("tiny5")
    model.save_pretrained(directory)
    return directory, {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ 1. config mutation
@pytest.mark.parametrize("lib", LIBS)
def test_mutated_config_builds_a_model_that_saves_and_reloads_in_both_libraries(lib: str, tmp_path) -> None:
    mod, other = LIBS[lib], LIBS[OTHER[lib]]
    config = mod.EfficientNetConfig(**TINY)
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    config.id2label = {0: "cat", 1: "dog", 2: "bird", 3: "fish"}
    assert config.num_labels == 4
    model = randomize(mod.EfficientNetForImageClassification(config), seed=1).eval()
    assert model.classifier.out_features == 4
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(_x()).logits
    for loader in (mod, other):
        again = loader.EfficientNetForImageClassification.from_pretrained(tmp_path).eval()
        assert again.config.num_labels == 4 and again.config.id2label[3] == "fish"
        with torch.no_grad():
            _close(again(_x()).logits, expected)


@pytest.mark.parametrize("given", [
    {"num_labels": 3},
    {"id2label": {0: "cat", 1: "dog"}},
    {"id2label": {"0": "cat", "1": "dog"}, "label2id": {"cat": 0, "dog": 1}},
    {"num_labels": 3, "id2label": {0: "cat", 1: "dog"}},  # disagreeing: num_labels wins in both
])
def test_label_arguments_give_the_same_labels(given: dict) -> None:
    made = {lib: mod.EfficientNetConfig(**TINY, **given) for lib, mod in LIBS.items()}
    ours, ref = made["effnet"], made["transformers"]
    assert (ours.num_labels, ours.id2label) == (ref.num_labels, ref.id2label)
    # transformers leaves label2id unset when only id2label is given; effnet derives it (docs/transformers.md).
    assert ours.label2id == (ref.label2id if ref.label2id is not None else {v: k for k, v in ref.id2label.items()})


def test_setting_id2label_keeps_label2id_in_step() -> None:
    """effnet also rewrites label2id (transformers leaves it stale); docs/transformers.md lists it."""
    config = effnet_cli.EfficientNetConfig(**TINY)
    config.id2label = {"0": "cat", "1": "dog", "2": "bird"}
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    with pytest.raises(effnet_cli.ConfigError, match="num_labels"):
        config.num_labels = "three"


# ------------------------------------------------------------------ 2. switches read from the config
@pytest.mark.parametrize("lib", LIBS)
def test_forward_reads_return_dict_and_output_hidden_states_from_the_config(lib: str) -> None:
    mod = LIBS[lib]
    config = mod.EfficientNetConfig(**TINY, num_labels=3, output_hidden_states=True)
    model = randomize(mod.EfficientNetForImageClassification(config), seed=2).eval()
    with torch.no_grad():
        out = model(_x())
        assert out.hidden_states is not None and len(out.hidden_states) == 9  # stem + 8 blocks
        assert model(_x(), output_hidden_states=False).hidden_states is None  # the argument wins
        model.config.return_dict = False
        assert model.config.use_return_dict is False
        plain = model(_x())
        base = model.efficientnet(_x())
        assert model(_x(), return_dict=True).logits.shape == (2, 3)
    assert isinstance(plain, tuple) and len(plain) == 2 and isinstance(plain[1], tuple)
    assert isinstance(base, tuple) and len(base) == 3  # last_hidden_state, pooler_output, hidden_states
    _close(plain[0], out.logits)


def test_config_switches_give_the_same_numbers_in_both_libraries() -> None:
    results = {}
    for lib, mod in LIBS.items():
        config = mod.EfficientNetConfig(**TINY, num_labels=3, output_hidden_states=True, return_dict=False)
        model = randomize(mod.EfficientNetForImageClassification(config), seed=2).eval()
        with torch.no_grad():
            results[lib] = model(_x())
    ours, ref = results["effnet"], results["transformers"]
    assert len(ours) == len(ref) and len(ours[1]) == len(ref[1])
    _close(ours[0], ref[0])
    for a, b in zip(ours[1], ref[1]):
        _close(a, b)


# ------------------------------------------------------------------ 3. outputs as mappings
def _mapping_view(out) -> dict:
    return {
        "iter": list(out),
        "keys": list(out.keys()),
        "items": [k for k, _ in out.items()],
        "values": len(list(out.values())),
        "in": [name in out for name in ("loss", "logits", "hidden_states", "pooler_output", "last_hidden_state")],
        "len": len(out),
        "tuple": len(out.to_tuple()),
        "slice": len(out[1:]),
        "is_dict": isinstance(out, dict),
    }


@pytest.mark.parametrize("labels", [None, torch.tensor([0, 2])])
@pytest.mark.parametrize("hidden", [False, True])
def test_outputs_are_ordered_mappings_like_the_reference(labels, hidden: bool) -> None:
    views, firsts, seconds = {}, {}, {}
    for lib, mod in LIBS.items():
        config = mod.EfficientNetConfig(**TINY, num_labels=3)
        model = randomize(mod.EfficientNetForImageClassification(config), seed=4).eval()
        with torch.no_grad():
            out = model(_x(), labels=labels, output_hidden_states=hidden)
            base = model.efficientnet(_x(), output_hidden_states=hidden)
        views[lib] = (_mapping_view(out), _mapping_view(base))
        firsts[lib] = (out[0], base[0], base["pooler_output"], out["logits"])
        seconds[lib] = out.logits
        assert out[0] is out.to_tuple()[0]
        assert base.pooler_output is base["pooler_output"] is base[1]
        assert out.loss is None if labels is None else out["loss"] is out.loss
    assert views["effnet"] == views["transformers"]
    for a, b in zip(firsts["effnet"], firsts["transformers"]):
        _close(a, b, rel=1e-4)


def test_outputs_keep_attribute_and_key_in_step_and_pickle() -> None:
    import pickle

    from effnet_cli.core.model import ImageClassifierOutput

    out = ImageClassifierOutput(logits=torch.ones(1, 2))
    out.logits = torch.zeros(1, 2)
    assert torch.equal(out["logits"], torch.zeros(1, 2))
    out["logits"] = torch.full((1, 2), 2.0)
    assert torch.equal(out.logits, torch.full((1, 2), 2.0))
    again = pickle.loads(pickle.dumps(out))
    assert type(again) is ImageClassifierOutput and list(again) == ["logits"] and again.loss is None
    with pytest.raises(TypeError):
        del out["logits"]


# ------------------------------------------------------------------ 4. config kwargs and serialisation
@pytest.mark.parametrize("lib", LIBS)
def test_unknown_config_keys_are_attributes_and_travel_through_config_json(lib: str, tmp_path) -> None:
    mod, other = LIBS[lib], LIBS[OTHER[lib]]
    config = mod.EfficientNetConfig(**TINY, hidden_size=37, num_labels=3)
    assert config.hidden_size == 37 and config.model_type == "efficientnet"
    config.update({"dropout_rate": 0.1, "my_note": "kept"})
    assert config.dropout_rate == 0.1 and config.my_note == "kept"
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["hidden_size"] == 37 and written["my_note"] == "kept" and written["model_type"] == "efficientnet"
    for loader in (mod, other):
        again = loader.EfficientNetConfig.from_pretrained(tmp_path)
        assert (again.hidden_size, again.my_note, again.dropout_rate, again.num_labels) == (37, "kept", 0.1, 3)
    changed = mod.EfficientNetConfig.from_pretrained(tmp_path, num_labels=4)
    assert changed.num_labels == 4 and len(changed.id2label) == 4
    as_dict = config.to_dict()
    assert as_dict["hidden_size"] == 37 and json.loads(config.to_json_string())["my_note"] == "kept"
    config.to_json_file(tmp_path / "other.json")
    assert json.loads((tmp_path / "other.json").read_text())["hidden_size"] == 37


def test_config_json_has_the_same_content_as_the_references(tmp_path) -> None:
    written = {}
    for lib, mod in LIBS.items():
        config = mod.EfficientNetConfig(**TINY, num_labels=3, hidden_size=37, output_hidden_states=True)
        config.save_pretrained(tmp_path / lib)
        written[lib] = json.loads((tmp_path / lib / "config.json").read_text())
        written[lib].pop("transformers_version", None)  # the reference stamps its version; effnet keeps one it read
    assert written["effnet"] == written["transformers"]


def test_config_json_read_from_transformers_is_written_back_byte_for_byte(tmp_path) -> None:
    labels = {0: "crème brûlée", 1: "dog", 2: "bird"}
    reference = transformers.EfficientNetConfig(**TINY, id2label=labels, label2id={v: k for k, v in labels.items()},
                                                hidden_size=37, output_hidden_states=True)
    reference.save_pretrained(tmp_path / "ref")
    ours = effnet_cli.EfficientNetConfig.from_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "config.json").read_bytes() == (tmp_path / "ref" / "config.json").read_bytes()


def test_effnet_config_keeps_typed_validation() -> None:
    with pytest.raises(effnet_cli.ConfigError, match="hidden_act"):
        effnet_cli.EfficientNetConfig(**TINY, hidden_act="tanhh")
    config = effnet_cli.EfficientNetConfig(**TINY)
    config.pooling_type = "median"
    with pytest.raises(effnet_cli.ConfigError, match="pooling_type"):
        effnet_cli.EfficientNetModel(config)  # a mutated config is checked when a model is built from it


# ------------------------------------------------------------------ 5. processor
@pytest.mark.parametrize("lib", LIBS)
def test_processor_save_returns_the_files_and_loads_in_both_libraries(lib: str, tmp_path) -> None:
    mod, other = LIBS[lib], LIBS[OTHER[lib]]
    processor = mod.EfficientNetImageProcessor(size={"height": 24, "width": 24}, resample=0, do_convert_rgb=True)
    files = processor.save_pretrained(tmp_path)
    assert isinstance(files, list) and len(files) == 1 and files[0].endswith("preprocessor_config.json")
    assert json.loads(open(files[0]).read())["do_convert_rgb"] is True
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    expected = processor(image, return_tensors="pt").pixel_values
    for loader in (mod, other):
        again = loader.EfficientNetImageProcessor.from_pretrained(tmp_path)
        assert again.do_convert_rgb is True and again.size["height"] == 24
        _close(again(image, return_tensors="pt").pixel_values, expected)
    default = mod.EfficientNetImageProcessor()
    assert default.do_convert_rgb is None
    default.save_pretrained(tmp_path / "default")
    assert "do_convert_rgb" not in json.loads((tmp_path / "default" / "preprocessor_config.json").read_text())


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(5)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 41, 3), dtype=np.uint8))
    return {
        "P": rgb.convert("P"),
        "1": rgb.convert("1"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (37, 41), dtype=np.uint16)),
        "LA": rgb.convert("LA"),
        "RGBA": Image.fromarray(rng.integers(0, 256, (37, 41, 4), dtype=np.uint8), "RGBA"),
        "CMYK": rgb.convert("CMYK"),
        "L": rgb.convert("L"),
    }


REFERENCE_PROCESSORS = {"torchvision": "EfficientNetImageProcessor", "pil": "EfficientNetImageProcessorPil"}


@pytest.mark.parametrize("backend", list(REFERENCE_PROCESSORS))
@pytest.mark.parametrize("convert", [None, True, False])
@pytest.mark.parametrize("mode", list(_images()))
def test_do_convert_rgb_gives_the_references_pixel_values(mode: str, convert, backend: str) -> None:
    """Equal pixel_values where the reference gives some; a clear InputError where it fails on the channels."""
    image = _images()[mode]
    options = dict(size={"height": 16, "width": 16}, resample=0, do_center_crop=True,
                   crop_size={"height": 14, "width": 14})
    extra = {} if convert is None else {"do_convert_rgb": convert}
    reference = getattr(transformers, REFERENCE_PROCESSORS[backend])(**options, **extra)
    ours = effnet_cli.EfficientNetImageProcessor(**options, **extra, backend=backend)
    assert ours.do_convert_rgb == reference.do_convert_rgb
    try:
        expected = reference(image, return_tensors="pt").pixel_values
    except (ValueError, RuntimeError):
        with pytest.raises(effnet_cli.InputError, match="do_convert_rgb=True"):
            ours(image)
        assert not convert
        return
    _close(ours(image).pixel_values, expected)
    # Per call, as in the reference.
    _close(effnet_cli.EfficientNetImageProcessor(**options, backend=backend)(image, **extra).pixel_values, expected)


def test_the_command_line_path_always_converts_to_rgb() -> None:
    """preprocess_pil (the CLI's loader) converts whatever do_convert_rgb says: it classifies photos."""
    image = _images()["P"]
    processor = effnet_cli.EfficientNetImageProcessor(size={"height": 16, "width": 16})
    converted = processor.replace(do_convert_rgb=True)(image).pixel_values[0]
    torch.testing.assert_close(processor.preprocess_pil(image), converted)
    assert not torch.allclose(processor(image).pixel_values[0], converted)  # palette indices, as the reference


# ------------------------------------------------------------------ 6. fine-tuning idioms
HEAD = {"weight": (3, 320), "bias": (3,)}


@pytest.mark.parametrize("lib", LIBS)
def test_head_swap_with_ignore_mismatched_sizes(lib: str, checkpoint) -> None:
    directory, saved = checkpoint
    mod = LIBS[lib]
    labels = {0: "cat", 1: "dog", 2: "bird"}
    torch.manual_seed(0)
    model, info = mod.EfficientNetForImageClassification.from_pretrained(
        directory, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()},
        ignore_mismatched_sizes=True, output_loading_info=True)
    assert not model.training
    assert model.config.num_labels == 3 and model.config.id2label == labels
    assert set(info) >= {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["error_msgs"] == []
    assert info["mismatched_keys"] == {("classifier.weight", torch.Size([5, 320]), torch.Size([3, 320])),
                                       ("classifier.bias", torch.Size([5]), torch.Size([3]))}
    state = model.state_dict()
    for key, value in saved.items():  # everything but the head loaded exactly
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    # The new head as the reference initialises it: N(0, initializer_range) weights, zero bias.
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    assert tuple(weight.shape) == HEAD["weight"] and torch.equal(bias, torch.zeros(3))
    assert abs(weight.std().item() - model.config.initializer_range) < 0.15 * model.config.initializer_range
    assert abs(weight.mean().item()) < 0.003


def test_seeded_head_swap_gives_the_same_head_in_both_libraries(checkpoint) -> None:
    heads = {}
    for lib, mod in LIBS.items():
        torch.manual_seed(123)
        model = mod.EfficientNetForImageClassification.from_pretrained(checkpoint[0], num_labels=3,
                                                                       ignore_mismatched_sizes=True)
        heads[lib] = model.classifier.weight.detach()
    assert torch.equal(heads["effnet"], heads["transformers"])


@pytest.mark.parametrize("lib", LIBS)
def test_head_shape_mismatch_without_the_flag_is_an_error(lib: str, checkpoint) -> None:
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        LIBS[lib].EfficientNetForImageClassification.from_pretrained(checkpoint[0], num_labels=3)


@pytest.mark.parametrize("lib", LIBS)
def test_keywords_neither_library_knows_are_a_type_error(lib: str, checkpoint) -> None:
    with pytest.raises(TypeError, match="num_lables"):
        LIBS[lib].EfficientNetForImageClassification.from_pretrained(checkpoint[0], num_lables=3)


def test_loading_info_for_a_head_added_or_dropped_matches_the_reference(checkpoint, tmp_path) -> None:
    directory, _ = checkpoint
    infos = {}
    for lib, mod in LIBS.items():
        _, dropped = mod.EfficientNetModel.from_pretrained(directory, output_loading_info=True)
        base = mod.EfficientNetModel(mod.EfficientNetConfig(**TINY))
        base.save_pretrained(tmp_path / lib)
        added, info = mod.EfficientNetForImageClassification.from_pretrained(tmp_path / lib, output_loading_info=True)
        infos[lib] = (dropped, info)
        assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}
        assert torch.equal(added.classifier.bias.detach(), torch.zeros(2))
    assert infos["effnet"] == infos["transformers"]
    assert infos["effnet"][0]["unexpected_keys"] == {"classifier.weight", "classifier.bias"}


def test_checkpoint_without_step_counters_keeps_its_statistics() -> None:
    """Older torch checkpoints lack num_batches_tracked: reported missing, the loaded statistics kept."""
    model = randomize(effnet_cli.EfficientNetForImageClassification(effnet_cli.EfficientNetConfig(**TINY)), 1)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    results = {}
    for lib, mod in LIBS.items():
        loaded, info = mod.EfficientNetForImageClassification.from_pretrained(
            None, config=mod.EfficientNetConfig(**TINY), state_dict=state, output_loading_info=True)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
        results[lib] = info["missing_keys"]
    assert results["effnet"] == results["transformers"]
    assert len(results["effnet"]) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("spelling", ["dtype", "torch_dtype"])
def test_dtype_spellings(lib: str, spelling: str, checkpoint) -> None:
    model = LIBS[lib].EfficientNetForImageClassification.from_pretrained(checkpoint[0], **{spelling: torch.float16})
    assert model.dtype == torch.float16 and model.classifier.weight.dtype == torch.float16


@pytest.mark.parametrize("lib", LIBS)
def test_a_half_precision_checkpoint_loads_in_its_own_dtype_unless_told(lib: str, checkpoint, tmp_path) -> None:
    mod = LIBS[lib]
    mod.EfficientNetForImageClassification.from_pretrained(checkpoint[0]).half().save_pretrained(tmp_path)
    cls = mod.EfficientNetForImageClassification
    assert cls.from_pretrained(tmp_path).dtype == torch.float16  # transformers 5's default, dtype="auto"
    assert cls.from_pretrained(tmp_path, dtype="auto").dtype == torch.float16
    assert cls.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32
    assert cls.from_pretrained(checkpoint[0]).dtype == torch.float32


@pytest.mark.parametrize("lib", LIBS)
def test_from_pretrained_none_with_config_and_state_dict(lib: str, checkpoint) -> None:
    directory, saved = checkpoint
    mod = LIBS[lib]
    config = mod.EfficientNetConfig.from_pretrained(directory)
    model = mod.EfficientNetForImageClassification.from_pretrained(None, config=config, state_dict=saved)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    with torch.no_grad():
        expected = effnet_cli.EfficientNetForImageClassification.from_pretrained(directory)(_x()).logits
        _close(model(_x()).logits, expected)


@pytest.mark.parametrize("lib", LIBS)
def test_hub_keywords_keep_working_with_the_fine_tuning_ones(lib: str, checkpoint, tmp_path) -> None:
    """revision / cache_dir / local_files_only on an offline hub cache, together with a head swap."""
    from tests.test_hub import COMMIT, _hub_cache

    directory, saved = checkpoint
    cache = _hub_cache(tmp_path, directory, repo="someone/tiny-efficientnet") / "hub"
    mod = LIBS[lib]
    for revision in ("main", COMMIT):
        model = mod.EfficientNetForImageClassification.from_pretrained(
            "someone/tiny-efficientnet", revision=revision, cache_dir=cache, local_files_only=True,
            num_labels=3, ignore_mismatched_sizes=True)
        assert model.config.num_labels == 3
        stem = "efficientnet.embeddings.convolution.weight"
        assert torch.equal(model.state_dict()[stem], saved[stem])
    config = mod.EfficientNetConfig.from_pretrained("someone/tiny-efficientnet", cache_dir=cache,
                                                    local_files_only=True)
    assert config.num_labels == 5


def _train_step(model, optimiser, seed: int) -> None:
    x = _x(4, seed=seed)
    labels = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(seed)  # the same dropout masks in every library and mode
    model(x, labels=labels).loss.backward()
    optimiser.step()
    optimiser.zero_grad()


def test_gradient_checkpointing_gives_the_same_gradients(checkpoint) -> None:
    directory, _ = checkpoint
    models = {
        "reference": transformers.EfficientNetForImageClassification.from_pretrained(directory),
        "plain": effnet_cli.EfficientNetForImageClassification.from_pretrained(directory),
        "checkpointed": effnet_cli.EfficientNetForImageClassification.from_pretrained(directory),
    }
    ours = models["checkpointed"]
    assert ours.supports_gradient_checkpointing and not ours.is_gradient_checkpointing
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    grads, stats = {}, {}
    for name, model in models.items():
        model.train()
        torch.manual_seed(7)  # dropout on (rate 0.3 in blocks and head): the same masks in all three
        loss = model(_x(4), labels=torch.tensor([0, 1, 2, 3])).loss
        loss.backward()
        grads[name] = {k: p.grad for k, p in model.named_parameters()}
        stats[name] = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert grads["plain"]["classifier.weight"].abs().max() > 0
    # Some gradients are zero in exact arithmetic (a bias followed by batch norm) and float noise of ~1e-6
    # in practice: compare every tensor on the scale of the model's gradients, not on its own.
    scale = max(g.abs().max() for g in grads["plain"].values())
    for key in grads["plain"]:
        _close(grads["checkpointed"][key], grads["plain"][key], scale=scale)
        _close(grads["checkpointed"][key], grads["reference"][key], rel=1e-4, scale=scale)
    for key in stats["plain"]:  # batch-norm statistics move once per step, not again in the recomputation
        torch.testing.assert_close(stats["checkpointed"][key], stats["plain"][key])
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing


@pytest.mark.parametrize("trainer", LIBS)
def test_fine_tuning_round_trip_between_the_libraries(trainer: str, checkpoint, tmp_path) -> None:
    """New head, a few steps of training (checkpointing on where supported), save, reload in the other library."""
    directory, saved = checkpoint
    mod, other = LIBS[trainer], LIBS[OTHER[trainer]]
    torch.manual_seed(1)
    model = mod.EfficientNetForImageClassification.from_pretrained(directory, num_labels=3,
                                                                   ignore_mismatched_sizes=True)
    if model.supports_gradient_checkpointing:  # effnet; transformers' EfficientNet has no checkpointing
        model.gradient_checkpointing_enable()
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(3):
        _train_step(model, optimiser, seed=step)
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = other.EfficientNetForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_labels == 3
    with torch.no_grad():
        trained, again = model(_x(3, seed=9)).logits, reloaded(_x(3, seed=9)).logits
    stem = "efficientnet.embeddings.convolution.weight"
    assert not torch.allclose(model.state_dict()[stem], saved[stem])  # training moved the body too
    _close(again, trained)


def test_the_same_seeded_fine_tuning_gives_the_same_model_in_both_libraries(checkpoint) -> None:
    """Seeded head swap, three training steps (effnet with checkpointing, transformers without), same logits."""
    directory, _ = checkpoint
    logits = {}
    for lib, mod in LIBS.items():
        torch.manual_seed(1)
        model = mod.EfficientNetForImageClassification.from_pretrained(directory, num_labels=3,
                                                                       ignore_mismatched_sizes=True)
        if model.supports_gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        for step in range(3):
            _train_step(model, optimiser, seed=step)
        with torch.no_grad():
            logits[lib] = model.eval()(_x(3, seed=9)).logits
    # Two implementations sum in different orders; three SGD steps on these large random-weight logits
    # amplify float noise to ~1e-4 (more or less with the thread count). The exact save/reload round trip
    # is test_fine_tuning_round_trip_between_the_libraries, at 1e-5.
    _close(logits["effnet"], logits["transformers"], rel=1e-3)
