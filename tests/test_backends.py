"""``--backend``: the exported model in ONNX Runtime or OpenVINO gives the PyTorch model's numbers."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet_cli.runtime.backends import auto_candidates, choose_backend
from effnet_cli.runtime.cache import cached_export, export_key
from effnet_cli.errors import InputError
from effnet_cli.runtime.export import sample_pixels
from effnet_cli.hub import load_pretrained
from effnet_cli.runtime.engine import Engine
from tests.cli_helpers import run

pytest.importorskip("onnxruntime")
RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("openvino") is None, reason="openvino not installed"))]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def small(b0_small_dir: Path, photos: list[Path]):
    model, processor = load_pretrained(b0_small_dir)
    pixels = sample_pixels(processor, photos)
    with torch.inference_mode():
        out = model(pixels, return_dict=True)
        fmap = model.efficientnet(pixels).last_hidden_state
    return model, processor, pixels, out.logits, fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))


@pytest.mark.parametrize("backend", RUNTIMES)
def test_float32_backend_matches_plain_pytorch(small, backend):
    model, processor, pixels, logits, mean, peak = small
    engine = Engine(model, processor, device="cpu", backend=backend)
    assert engine.backend == backend
    assert relative_error(engine.logits(pixels), logits) <= 1e-4
    assert relative_error(engine.features(pixels), mean) <= 1e-4
    assert relative_error(engine.features(pixels, pool="max"), peak) <= 1e-4
    # Stage features are not an output of the export: the PyTorch model serves them.
    assert engine.features(pixels[:1], stage=2).shape == (1, model.config.stages()[1].out_channels)


def test_lite0_float32_and_bfloat16_on_the_photos(photos):
    model, processor = load_pretrained("lite0")
    pixels = sample_pixels(processor, photos)
    with torch.inference_mode():
        want = model(pixels).logits
    bf16_backends = ["torch"]
    for backend in ("onnxruntime", "openvino"):
        if backend == "openvino" and not __import__("importlib").util.find_spec("openvino"):
            continue
        assert relative_error(Engine(model, processor, device="cpu", backend=backend).logits(pixels), want) <= 1e-4
        if backend == "openvino":
            bf16_backends.append(backend)
    for backend in bf16_backends:
        bf16 = Engine(model, processor, device="cpu", backend=backend, dtype="bfloat16")
        assert bf16.logits(pixels).argmax(-1).tolist() == want.argmax(-1).tolist(), backend


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None, reason="openvino not installed")
def test_openvino_bfloat16_keeps_stem_and_first_stage_in_float32(small, tmp_path):
    """OpenVINO honours the float32 marks under the bfloat16 hint: the first convolutions run in float32."""
    from effnet_cli.runtime.backends import _openvino_bf16
    from effnet_cli.runtime.runners import OpenVinoRunner, keep_float32
    from effnet_cli.runtime.export import model_file

    if not _openvino_bf16():
        pytest.skip("OpenVINO reports no native bfloat16 on this CPU")
    model, processor, pixels, logits, *_ = small
    path = model_file(cached_export(model, processor, "openvino", cache=tmp_path), "openvino")
    assert "DisablePrecisionConversion" in keep_float32(path)
    assert "DisablePrecisionConversion" not in path.read_text()  # the cached IR itself stays plain float32
    runner = OpenVinoRunner(path, dtype="bfloat16")
    got = runner.run(pixels.numpy(), ["logits"])["logits"]
    precisions = [op.get_rt_info()["runtimePrecision"].astype(str)
                  for op in runner.compiled.get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    # Stem (1 conv) and the first stage (b0: depthwise, two squeeze-excite 1x1s, projection) in float32.
    first = 1 + 4 * sum(1 for b in model.config.blocks() if b.stage == 0)
    assert precisions[:first] == ["f32"] * first
    assert set(precisions[first:]) == {"bf16"}
    assert relative_error(torch.from_numpy(got), logits) < 5e-2
    # `effnet export --format openvino --dtype bfloat16` writes the marks into the IR, for OpenVINO used directly.
    import openvino as ov

    from effnet_cli.runtime.export import write_export

    exported = tmp_path / "bf16-export"
    exported.mkdir()
    write_export(model, processor, exported, fmt="openvino", dtype="bfloat16",
                 onnx_source=model_file(cached_export(model, processor, "onnx", cache=tmp_path), "onnx"))
    compiled = ov.Core().compile_model(str(model_file(exported, "openvino")), "CPU")  # the IR's own bf16 hint
    direct = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
              if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    assert direct == precisions


def test_export_is_cached_and_keyed_by_weights_and_size(small, tmp_path):
    model, processor, *_ = small
    first = cached_export(model, processor, "onnx", cache=tmp_path)
    stamp = (first / "model.onnx").stat().st_mtime_ns
    assert cached_export(model, processor, "onnx", cache=tmp_path) == first
    assert (first / "model.onnx").stat().st_mtime_ns == stamp  # reused, not written again
    entries = [p.name for p in (tmp_path / "exports" / "onnx").iterdir() if not p.name.endswith(".lock")]
    assert entries == [first.name]
    # Another input size, dtype or set of weights is another export.
    keys = {export_key(model, processor, "onnx", "float32"),
            export_key(model, processor.replace(size={"height": 48, "width": 48}), "onnx", "float32"),
            export_key(model, processor, "onnx", "float16")}
    with torch.no_grad():
        model.classifier.bias.add_(1)
    try:
        keys.add(export_key(model, processor, "onnx", "float32"))
    finally:
        with torch.no_grad():
            model.classifier.bias.sub_(1)
    assert first.name in keys and len(keys) == 4


def _export_in_child(directory: str, cache: str, queue: multiprocessing.Queue) -> None:
    model, processor = load_pretrained(directory)
    queue.put(str(cached_export(model, processor, "onnx", cache=Path(cache))))


def test_concurrent_runs_share_one_complete_export(b0_small_dir, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_export_in_child, args=(str(b0_small_dir), str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    paths = {queue.get(timeout=240) for _ in procs}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(paths) == 1  # both use the same export
    root = tmp_path / "exports" / "onnx"
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [Path(paths.pop()).name]
    import onnxruntime as ort

    ort.InferenceSession(str(next(root.glob("*/model.onnx"))), providers=["CPUExecutionProvider"])


def test_auto_candidates():
    has_ov = __import__("importlib").util.find_spec("openvino") is not None
    assert auto_candidates(device_type="cpu", dtype="float32") == ["torch", *(["openvino"] if has_ov else []),
                                                                    "onnxruntime"]
    assert auto_candidates(device_type="cuda", dtype="float32") == ["torch"]
    assert "onnxruntime" not in auto_candidates(device_type="cpu", dtype="bfloat16")
    assert choose_backend("auto", device_type="cpu", dtype="float32", needs_torch="--compile") == "torch"
    with pytest.raises(InputError, match="--compile"):
        choose_backend("onnxruntime", device_type="cpu", dtype="float32", needs_torch="--compile")
    with pytest.raises(InputError, match="bfloat16"):
        choose_backend("onnxruntime", device_type="cpu", dtype="bfloat16")


@pytest.fixture
def auto_cache(tmp_path_factory, monkeypatch) -> Path:
    """One cache for the tests of ``auto``: exports made once, no remembered choices at the start of a test."""
    global _AUTO_CACHE
    if _AUTO_CACHE is None:
        _AUTO_CACHE = tmp_path_factory.mktemp("auto-cache")
    shutil.rmtree(_AUTO_CACHE / "exports" / "auto", ignore_errors=True)
    monkeypatch.setenv("EFFNET_CACHE", str(_AUTO_CACHE))
    return _AUTO_CACHE


_AUTO_CACHE: Path | None = None


def test_auto_measures_once_and_remembers(small, auto_cache):
    model, processor, pixels, logits, *_ = small
    tmp_path = auto_cache
    engine = Engine(model, processor, device="cpu", backend="auto")
    [record] = (tmp_path / "exports" / "auto").glob("*.json")
    measured = json.loads(record.read_text())
    assert set(measured["images_per_s"]) == set(auto_candidates(device_type="cpu", dtype="float32"))
    assert engine.backend == measured["backend"] == max(measured["images_per_s"], key=measured["images_per_s"].get)
    assert relative_error(engine.logits(pixels), logits) <= 1e-4
    # Later runs read the choice instead of measuring again.
    for choice in ("onnxruntime", "torch"):
        record.write_text(json.dumps({**measured, "backend": choice}))
        assert Engine(model, processor, device="cpu", backend="auto").backend == choice


def test_auto_measures_per_batch_size_and_can_be_told_not_to(small, tmp_path, auto_cache, monkeypatch):
    model, processor, pixels, logits, *_ = small
    monkeypatch.setenv("EFFNET_CACHE", str(tmp_path))
    # Not allowed to measure and nothing remembered: PyTorch, and nothing exported or written.
    assert Engine(model, processor, device="cpu", backend="auto", measure=False).backend == "torch"
    assert not (tmp_path / "exports").exists()
    monkeypatch.setenv("EFFNET_CACHE", str(auto_cache))
    tmp_path = auto_cache
    single = Engine(model, processor, device="cpu", backend="auto", batch_size=1)
    [record] = (tmp_path / "exports" / "auto").glob("*.json")
    assert json.loads(record.read_text())["batch"] == 1
    assert relative_error(single.logits(pixels[:1]), logits[:1]) <= 1e-4
    # Another batch size is measured on its own; then both are remembered, even when told not to measure.
    Engine(model, processor, device="cpu", backend="auto", batch_size=16)
    records = {json.loads(r.read_text())["batch"]: r for r in (tmp_path / "exports" / "auto").glob("*.json")}
    assert set(records) == {1, 16}
    records[16].write_text(json.dumps({**json.loads(records[16].read_text()), "backend": "onnxruntime"}))
    assert Engine(model, processor, device="cpu", backend="auto", batch_size=16, measure=False).backend == "onnxruntime"


def test_cli_auto_measures_only_runs_long_enough_to_gain(b0_small_dir, photos, auto_cache, monkeypatch):
    import effnet_cli.runtime.backends

    tmp_path = auto_cache
    args = ["classify", str(photos[0].parent), "--model", str(b0_small_dir), "-f", "jsonl", "--workers", "0"]
    short = run(args)  # the default backend is auto; five photos are far below the threshold
    assert short.exit_code == 0, short.stderr
    assert not (tmp_path / "exports" / "auto").exists() and "choosing the fastest backend" not in short.stderr
    monkeypatch.setattr(effnet_cli.runtime.backends, "AUTO_MEASURE_MIN_IMAGES", len(photos))
    long = run(args + ["-b", "4"])
    assert long.exit_code == 0, long.stderr
    assert "choosing the fastest backend" in long.stderr
    [record] = (tmp_path / "exports" / "auto").glob("*.json")
    measured = json.loads(record.read_text())
    assert measured["batch"] == 4
    assert f"{measured['backend']} was fastest" in long.stderr
    for a, b in zip(*[[json.loads(line) for line in o.stdout.splitlines()] for o in (short, long)]):
        assert a["path"] == b["path"]
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        assert np.allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]],
                           atol=1e-5)
    again = run(args + ["-b", "4"])  # remembered: no second measurement
    assert again.exit_code == 0 and "choosing" not in again.stderr
    assert len(list((tmp_path / "exports" / "auto").glob("*.json"))) == 1


def test_backend_default_from_the_environment(b0_small_dir, photos, monkeypatch):
    monkeypatch.setenv("EFFNET_BACKEND", "onnxruntime")
    bad = run(["classify", str(photos[0]), "--model", str(b0_small_dir), "--dtype", "bfloat16"])
    assert bad.exit_code == 2 and "ONNX Runtime has no bfloat16" in bad.stderr
    monkeypatch.setenv("EFFNET_BACKEND", "fastest")
    bad = run(["classify", str(photos[0]), "--model", str(b0_small_dir)])
    assert bad.exit_code == 2 and "fastest" in bad.stderr


def test_cli_backend_flag_same_predictions(b0_small_dir, photos):
    runs = {}
    for backend in ("torch", "onnxruntime"):
        outcome = run(["classify", str(photos[0].parent), "--model", str(b0_small_dir), "-f", "jsonl", "-k", "3",
                       "--backend", backend, "--workers", "0"])
        assert outcome.exit_code == 0, outcome.stderr
        runs[backend] = [json.loads(line) for line in outcome.stdout.splitlines()]
    for a, b in zip(runs["torch"], runs["onnxruntime"]):
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        assert np.allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]], atol=1e-5)
    bad = run(["classify", str(photos[0]), "--model", str(b0_small_dir), "--backend", "onnxruntime",
               "--dtype", "bfloat16"])
    assert bad.exit_code == 2 and "bfloat16" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_exact_decode_is_one_flag_on_both_commands(b0_small_dir, photos, tmp_path):
    big = photos[0]
    common = [str(big), "--model", str(b0_small_dir), "--backend", "torch", "--workers", "0"]

    def scores(*extra: str) -> list[float]:
        outcome = run(["classify", *common, "-f", "jsonl", *extra])
        assert outcome.exit_code == 0, outcome.stderr
        return [p["score"] for p in json.loads(outcome.stdout)["predictions"]]

    exact = scores("--exact-decode")
    old = run(["classify", *common, "-f", "jsonl", "--full-decode"])
    assert [p["score"] for p in json.loads(old.stdout)["predictions"]] == exact  # the old spelling still works
    assert "deprecated" in old.stderr
    assert scores("--fast-decode") != exact  # classify decodes fast by default; the flag says so explicitly
    arrays = {}
    for flag in ("--fast-decode", None):
        target = tmp_path / f"{flag or 'default'}.npy"
        outcome = run(["embed", *common, "-o", str(target), *([flag] if flag else [])])
        assert outcome.exit_code == 0, outcome.stderr
        arrays[flag] = np.load(target)
    with torch.inference_mode():  # embed decodes exactly by default: the rows of a plain full decode
        model, processor = load_pretrained(b0_small_dir)
        want = model.efficientnet(sample_pixels(processor, [big])).last_hidden_state.mean(dim=(2, 3)).numpy()
    assert np.abs(arrays[None] - want).max() <= 1e-4 * np.abs(want).max()
    assert not np.array_equal(arrays["--fast-decode"], arrays[None])
    assert "--exact-decode" in run(["classify", "--help"]).stdout and "--full-decode" not in run(
        ["classify", "--help"]).stdout
