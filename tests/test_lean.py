"""The lean runtime: exported models run by processes that never import torch.

Each CLI run here is a real subprocess. With ``block`` a sitecustomize on PYTHONPATH makes
importing torch or torchvision raise in that process and in every process it starts (the
decode workers are fresh interpreters with the same environment), so a run that succeeds
proves that none of them needed torch; without it, the sitecustomize reports at exit whether
torch was loaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import effnet

pytest.importorskip("onnxruntime")

SITECUSTOMIZE = '''
import atexit, os, sys
if os.environ.get("EFFNET_TEST_BLOCK_TORCH") == "1":
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
else:
    atexit.register(lambda: sys.stderr.write(f"\\ntorch-loaded={'torch' in sys.modules}\\n"))
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("site")
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return directory


def run(site: Path, *args: str, block: bool, cache: Path | None = None):
    env = {"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "EFFNET_TEST_BLOCK_TORCH": "1" if block else "0"}
    if cache is not None:
        env["EFFNET_CACHE"] = str(cache)
    return effnet(*args, env=env)


@pytest.fixture(scope="module")
def exports(b0_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX exports of the bundled Lite0 and of the seeded b0, written by `effnet export`."""
    out = {}
    for name, model in (("lite0", "lite0"), ("b0", str(b0_dir))):
        target = tmp_path_factory.mktemp(f"export-{name}") / "onnx"
        done = effnet("export", model, "-o", str(target))
        assert done.returncode == 0, done.stderr.decode()
        out[name] = target
    return out


def records(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


@pytest.mark.parametrize("name", ["lite0", "b0"])
def test_export_dir_classifies_without_torch_as_torch_does(name, exports, b0_dir, photos, site):
    weights = "lite0" if name == "lite0" else str(b0_dir)
    args = ["classify", *map(str, photos), "-k", "5", "-f", "jsonl", "--workers", "2", "-b", "2"]  # workers decode
    lean = run(site, *args, "--model", str(exports[name]), block=True)
    assert lean.returncode == 0, lean.stderr.decode()
    reference = run(site, *args, "--model", weights, "--backend", "torch", block=False)
    assert reference.returncode == 0, reference.stderr.decode()
    got, want = records(lean.stdout), records(reference.stdout)
    assert [r["path"] for r in got] == [r["path"] for r in want] == [str(p) for p in photos]
    for g, w in zip(got, want):
        assert [p["index"] for p in g["predictions"]] == [p["index"] for p in w["predictions"]]
        assert [p["label"] for p in g["predictions"]] == [p["label"] for p in w["predictions"]]
        assert np.allclose([p["score"] for p in g["predictions"]], [p["score"] for p in w["predictions"]],
                           atol=1e-4, rtol=0)


def test_export_dir_embeds_without_torch_and_reports_bad_inputs(exports, photos, site, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    inputs = [str(photos[0]), str(broken), str(photos[1])]
    lean = run(site, "embed", *inputs, "--model", str(exports["lite0"]), "-o", str(tmp_path / "lean.npy"),
               "--normalize", block=True)
    assert lean.returncode == 1, lean.stderr.decode()  # one input failed, with its own error
    assert "broken.jpg" in lean.stderr.decode()
    reference = run(site, "embed", *inputs, "--model", "lite0", "--backend", "torch", "-o",
                    str(tmp_path / "torch.npy"), "--normalize", block=False)
    assert reference.returncode == 1, reference.stderr.decode()
    got, want = np.load(tmp_path / "lean.npy"), np.load(tmp_path / "torch.npy")
    assert got.shape == want.shape == (2, 1280)
    assert np.abs(got - want).max() <= 1e-4
    manifest = [json.loads(line) for line in (tmp_path / "lean.jsonl").read_text().splitlines()]
    assert [m.get("row") for m in manifest] == [0, None, 1]


def test_torch_backend_or_stage_features_on_an_export_dir_are_usage_errors(exports, photos, site):
    torch_run = run(site, "classify", str(photos[0]), "--model", str(exports["lite0"]), "--backend", "torch",
                    block=True)
    assert torch_run.returncode == 2
    assert "PyTorch cannot run" in torch_run.stderr.decode() and "Traceback" not in torch_run.stderr.decode()
    stage = run(site, "embed", str(photos[0]), "--model", str(exports["lite0"]), "--features", "stage:3",
                "--backend", "onnxruntime", "-o", "/dev/null", block=True)
    assert stage.returncode == 2 and "Traceback" not in stage.stderr.decode()


def test_auto_exports_once_then_runs_without_torch(b0_small_dir, photos, site, tmp_path):
    args = ["classify", *map(str, photos), "--model", str(b0_small_dir), "-f", "jsonl", "-k", "3"]
    first = run(site, *args, block=False, cache=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    first_err = first.stderr.decode()
    assert "exporting the model for ONNX Runtime once" in first_err and "torch-loaded=True" in first_err
    later = run(site, *args, block=True, cache=tmp_path)  # the cached export: torch never loads
    assert later.returncode == 0, later.stderr.decode()
    assert "exporting" not in later.stderr.decode()
    for g, w in zip(records(later.stdout), records(first.stdout)):
        assert [p["index"] for p in g["predictions"]] == [p["index"] for p in w["predictions"]]
    # What needs the PyTorch model keeps it, export or not.
    explicit = run(site, *args, "--backend", "torch", block=False, cache=tmp_path)
    assert explicit.returncode == 0 and "torch-loaded=True" in explicit.stderr.decode()


def test_auto_takes_the_torch_path_when_pytorch_was_measured_fastest(b0_small_dir, photos, site, tmp_path):
    from effnet_cli.runtime.index import record_choice

    args = ["classify", str(photos[0]), "--model", str(b0_small_dir), "-f", "jsonl"]
    assert run(site, *args, block=False, cache=tmp_path).returncode == 0  # exports and indexes
    lean = run(site, *args, block=False, cache=tmp_path)
    assert "torch-loaded=False" in lean.stderr.decode()
    record_choice(b0_small_dir, 16, "torch", cache=tmp_path)
    measured = run(site, *args, block=False, cache=tmp_path)
    assert measured.returncode == 0 and "torch-loaded=True" in measured.stderr.decode()


def test_load_pretrained_runtime_model_gives_the_torch_outputs(b0_dir, photos):
    import torch
    from PIL import Image

    from effnet_cli import load_pretrained

    model, processor = load_pretrained(str(b0_dir))
    runtime, runtime_processor = load_pretrained(str(b0_dir), backend="onnxruntime")
    assert runtime.backend == "onnxruntime"
    images = [Image.open(p) for p in photos[:3]]
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    np.testing.assert_array_equal(runtime.preprocess(images), pixels.numpy())
    with torch.no_grad():
        want = model(pixels).logits.numpy()
        pooled = model.efficientnet(pixels).pooler_output.reshape(len(images), -1).numpy()
    out = runtime(pixels.numpy())
    assert isinstance(out.logits, np.ndarray)
    assert np.abs(out.logits - want).max() <= 1e-4
    assert np.abs(out.pooler_output - pooled).max() <= 1e-4
    # A second load finds the export through the index: the same directory, nothing exported again.
    again, _ = load_pretrained(str(b0_dir), backend="onnxruntime")
    assert again.directory == runtime.directory
    assert load_pretrained(str(b0_dir), backend="auto")[0].directory == runtime.directory


def test_openvino_asked_for_runs_an_onnx_only_export_in_openvino(exports):
    """`--backend openvino` on a directory with only model.onnx runs OpenVINO (which reads ONNX), not ONNX Runtime."""
    pytest.importorskip("openvino")
    from effnet_cli.runtime.lean import LeanEngine
    from effnet_cli.runtime.runners import OpenVinoRunner

    assert not (exports["b0"] / "model.xml").exists()
    engine = LeanEngine(exports["b0"], backend="openvino")
    assert engine.backend == "openvino" and isinstance(engine.runner, OpenVinoRunner)


def test_onnxruntime_runs_a_large_batch_in_slices_with_the_same_outputs(exports):
    """Batches above CPU_CHUNK run in slices (less arena memory): the outputs are those of the whole batch."""
    from effnet_cli.runtime import runners

    runner = runners.open_runner(exports["b0"] / "model.onnx", "onnx")
    x = np.random.default_rng(1).standard_normal((runners.CPU_CHUNK + 3, 3, 224, 224)).astype(np.float32)
    sliced = runner.run(x, ["logits", "features"])
    runner.chunk = None
    whole = runner.run(x, ["logits", "features"])
    for name in ("logits", "features"):
        assert sliced[name].shape == whole[name].shape == (len(x), whole[name].shape[1])
        assert np.abs(sliced[name] - whole[name]).max() <= 1e-5


def test_load_pretrained_auto_runs_each_batch_size_in_the_faster_runtime(b0_dir, monkeypatch):
    """auto times both runtimes at a batch size's first call, keeps the faster, and remembers it in the index."""
    pytest.importorskip("openvino")
    from effnet_cli import load_pretrained
    from effnet_cli.runtime import backends

    reference, _ = load_pretrained(str(b0_dir), backend="onnxruntime")  # exported and indexed
    timed = []

    def fake_rates(calls, batch):  # the real calls run once each; the ranking is the test's
        timed.append(batch)
        for call, _ in calls.values():
            call()
        return {"onnxruntime": 2.0, "openvino": 1.0} if batch == 1 else {"onnxruntime": 1.0, "openvino": 2.0}

    monkeypatch.setattr(backends, "time_backends", fake_rates)
    model, _ = load_pretrained(str(b0_dir), backend="auto")
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    out = model(x)
    assert model.backend == "openvino" and timed == [3]
    assert np.abs(out.logits - reference(x).logits).max() <= 1e-4
    assert np.abs(out.pooler_output - reference(x).pooler_output).max() <= 1e-4
    model(x[:1])
    assert model.backend == "onnxruntime" and timed == [3, 1]
    model(x)
    assert model.backend == "openvino" and timed == [3, 1]  # measured once per batch size

    def no_timing(calls, batch):
        raise AssertionError("a remembered choice must not be measured again")

    monkeypatch.setattr(backends, "time_backends", no_timing)
    again, _ = load_pretrained(str(b0_dir), backend="auto")
    again(x)
    assert again.backend == "openvino"


def test_load_pretrained_without_torch_in_the_process(exports, site):
    code = ("import sys; from PIL import Image; from effnet_cli import load_pretrained; "
            f"m, _ = load_pretrained({str(exports['lite0'])!r}); o = m(m.preprocess(Image.open(sys.argv[1]))); "
            "print(int(o.logits.argmax()), 'torch' in sys.modules)")
    import subprocess

    from conftest import PHOTOS

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "EFFNET_TEST_BLOCK_TORCH": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(PHOTOS[0])], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split()[1] == "False"
