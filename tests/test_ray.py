"""``--engine ray``: a local Ray on the CPU gives the local engine's embeddings, predictions and error records.

One Ray session serves the whole module (starting one costs several seconds);
the CLI finds it already connected and leaves it running.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from effnet_cli.scale.shards import read_embeddings, read_predictions
from tests.cli_helpers import run

# Ray Data warns about its own deprecated settings whenever a dataset copies its context.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray with 4 logical CPUs on this 2-core machine: two model actors plus room for decode tasks.

    Its workers see the fault hook's directory (empty, so inert, until a test puts a trigger in it).
    """
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from effnet_cli.scale.ray_stages import TEST_FAULTS_ENV

    started = time.monotonic()
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as the CLI does: no C++ notices in the output
    saved = os.environ.get(TEST_FAULTS_ENV)
    os.environ[TEST_FAULTS_ENV] = str(tmp_path_factory.mktemp("ray-faults"))  # Ray's workers inherit it
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    if saved is None:
        del os.environ[TEST_FAULTS_ENV]
    else:
        os.environ[TEST_FAULTS_ENV] = saved
    sys.stderr.write(f"\n[test_ray] Ray session open for {time.monotonic() - started:.1f}s\n")


def _inputs(photos: list[Path], tmp_path: Path) -> list[str]:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(photos[0].read_bytes()[:3000])  # a JPEG cut short: decodes to an error, not a failed job
    return [str(photos[0]), str(corrupt), *map(str, photos[1:]), str(tmp_path / "missing.jpg")]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [name for name in ("onnxruntime", "openvino")
                                     if importlib.util.find_spec(name) is not None])
def test_ray_actors_run_the_runtime_backend_asked_for(ray_session, backend: str, b0_small_dir: Path,
                                                       photos: list[Path], tmp_path: Path) -> None:
    """Each actor opens its own session of the runtime: the local PyTorch numbers to 1e-4, the backend recorded."""
    common = [*map(str, photos[:4]), "--model", str(b0_small_dir), "--shard-size", "2", "-j", "0"]
    local = run(["embed", *common, "--backend", "torch", "--output-dir", str(tmp_path / "local")])
    remote = run(["embed", *common, "--backend", backend, "--output-dir", str(tmp_path / "ray"), "--engine", "ray",
                  "--ray-actors", "2", "-b", "2"])
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    want, want_records = read_embeddings(tmp_path / "local")
    got, got_records = read_embeddings(tmp_path / "ray")
    assert got_records == want_records
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    settings = {json.loads(p.read_text())["settings"]["backend"] for p in (tmp_path / "ray").glob("_done_*.json")}
    assert settings == {backend}
    again = run(["embed", *common, "--backend", "torch", "--output-dir", str(tmp_path / "ray"), "--engine", "ray",
                 "--resume"])
    assert again.exit_code == 2 and f'backend="{backend}" there, "torch" now' in again.stderr, again.stderr


@pytest.mark.slow
def test_ray_embeddings_and_errors_equal_the_local_engine(ray_session, b0_small_dir: Path, photos: list[Path],
                                                          tmp_path: Path) -> None:
    inputs = _inputs(photos, tmp_path)
    common = [*inputs, "--model", str(b0_small_dir), "--shard-size", "3", "-j", "0"]
    local = run(["embed", *common, "--output-dir", str(tmp_path / "local")])
    remote = run(["embed", *common, "--output-dir", str(tmp_path / "ray"), "--engine", "ray", "--ray-actors", "2",
                  "-b", "2"])
    assert local.exit_code == remote.exit_code == 1, remote.stderr
    assert f"{tmp_path / 'corrupt.jpg'}: truncated JPEG" in remote.stderr
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == \
           sorted(p.name for p in (tmp_path / "local").iterdir())  # the same shard layout

    local_array, local_records = read_embeddings(tmp_path / "local")
    ray_array, ray_records = read_embeddings(tmp_path / "ray")
    assert ray_records == local_records  # same rows, same paths, same error reasons, word for word
    assert [r["error"] for r in ray_records if r["error"]] == ["truncated JPEG", "no such file"]
    np.testing.assert_allclose(ray_array, local_array, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ray_classify_over_awkward_files_with_a_partition_and_resume(ray_session, b0_small_dir: Path,
                                                                    photos: list[Path], tmp_path: Path) -> None:
    from tests.test_reliability import build_corpus

    good, bad = build_corpus(tmp_path / "corpus", photos[2])
    others = [str(p) for p in sorted([*good, *bad], key=str) if "\n" not in p.name]
    # Position 1 is in partition 1/2: the name with a line break (which Ray's URL parsing would mangle)
    # goes through Ray too, with a bomb, a truncated file, a missing one...
    inputs = [others[0], str(tmp_path / "corpus" / "line\nbreak.jpg"), *others[1:]]
    common = [*inputs, "--model", str(b0_small_dir), "-k", "3", "--shard-size", "3", "--shard", "1/2", "-j", "0"]
    local = run(["classify", *common, "--output-dir", str(tmp_path / "local")])
    out = tmp_path / "ray"
    remote = run(["classify", *common, "--output-dir", str(out), "--engine", "ray", "--ray-actors", "2"])
    assert local.exit_code == remote.exit_code == 1, remote.stderr
    again = run(["classify", *common, "--output-dir", str(out), "--engine", "ray", "--resume"])
    assert again.exit_code == 1 and "already finished" in again.stderr

    want = read_predictions(tmp_path / "local", complete=False)
    got = read_predictions(out, complete=False)
    assert [r["index"] for r in got] == list(range(1, len(inputs), 2))  # partition 1 of 2: odd positions only
    assert [(r["path"], r.get("error")) for r in got] == [(r["path"], r.get("error")) for r in want]
    mine = set(inputs[1::2])
    assert {r["path"] for r in got if "error" in r} == {str(p) for p in bad} & mine
    assert all(bad[Path(r["path"])] in r["error"] for r in got if "error" in r)
    for a, b in zip(want, got):
        if "predictions" in a:
            assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
            np.testing.assert_allclose([p["score"] for p in a["predictions"]],
                                       [p["score"] for p in b["predictions"]], rtol=1e-5)


def test_missing_ray_is_one_line_and_exit_2(monkeypatch, b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    res = run(["embed", str(photos[0]), "--model", str(b0_small_dir), "--output-dir", str(tmp_path / "o"),
               "--engine", "ray"])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "install effnet-cli[ray]" in res.stderr


@pytest.mark.slow
def test_a_killed_model_actor_is_restarted_and_the_run_completes(ray_session, b0_small_dir: Path,
                                                                 photos: list[Path], tmp_path: Path) -> None:
    from effnet_cli.scale.ray_stages import TEST_FAULTS_ENV

    common = [*map(str, photos), "--model", str(b0_small_dir), "--shard-size", "3", "-j", "0", "-b", "2"]
    local = run(["embed", *common, "--output-dir", str(tmp_path / "local")])
    trigger = Path(os.environ[TEST_FAULTS_ENV]) / "kill-actor-once"
    trigger.touch()  # the first actor to reach a batch SIGKILLs itself
    remote = run(["embed", *common, "--output-dir", str(tmp_path / "ray"), "--engine", "ray", "--ray-actors", "2"])
    assert not trigger.exists()  # an actor did die
    assert local.exit_code == remote.exit_code == 0, remote.stderr
    assert remote.stderr.count("\n") == 1 and "embedded" in remote.stderr  # the summary line, nothing from Ray
    local_array, local_records = read_embeddings(tmp_path / "local")
    ray_array, ray_records = read_embeddings(tmp_path / "ray")
    assert ray_records == local_records
    np.testing.assert_allclose(ray_array, local_array, rtol=1e-5, atol=1e-5)


class _CrashOnSize:
    """A transform that kills its process for images of one size, as a decoder segfault would."""

    def __init__(self, size: tuple[int, int], transform) -> None:
        self.size, self.transform = size, transform

    def __call__(self, image):
        if image.size == self.size:
            os.kill(os.getpid(), __import__("signal").SIGKILL)
        return self.transform(image)


class _WithTransform:
    """An engine whose decode stage uses another transform; the rest is the engine's."""

    def __init__(self, engine, transform) -> None:
        self._engine, self.transform = engine, transform

    def __getattr__(self, name: str):
        return getattr(self._engine, name)


@pytest.mark.slow
def test_an_input_that_kills_its_ray_worker_every_time_is_one_error_record(ray_session, b0_small_dir: Path,
                                                                          photos: list[Path], tmp_path: Path) -> None:
    """Ray retries the decode task a bounded number of times, drops its batch, and the driver redoes that
    batch input by input: the deadly input gets an error record, its neighbours their embeddings."""
    from PIL import Image

    from effnet_cli.data import CRASH_REASON
    from effnet_cli.scale.ray import run_ray
    from effnet_cli.scale.shards import ShardJob, embed_into_shards
    from effnet_cli.scale.spec import EngineSpec, RunOptions

    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers need not import tests
    deadly = tmp_path / "deadly.png"
    Image.new("RGB", (37, 23), (10, 200, 30)).save(deadly)
    inputs = [str(photos[0]), str(deadly), *map(str, photos[1:])]
    spec = EngineSpec(name=str(b0_small_dir))
    engine = spec.build("cpu")
    options = RunOptions(batch_size=2)

    def job(name: str) -> ShardJob:
        return ShardJob(kind="embed", directory=tmp_path / name, paths=inputs, total=len(inputs), shard_size=3,
                        meta_format="jsonl")

    embed_into_shards(engine, job("local"), options)
    recomputed: list[int] = []
    summary = run_ray(job("ray"), spec, _WithTransform(engine, _CrashOnSize((37, 23), engine.transform)), options,
                      actors=1, on_recompute=recomputed.append)
    assert (summary.inputs, summary.failures) == (len(inputs), 1)
    assert 1 <= sum(recomputed) <= len(inputs)  # the dropped batch, computed by the driver
    local_array, local_records = read_embeddings(tmp_path / "local")
    ray_array, ray_records = read_embeddings(tmp_path / "ray")
    assert [r["path"] for r in ray_records] == inputs
    assert ray_records[1]["error"] == CRASH_REASON and ray_records[1]["row"] is None
    for want, got in zip(local_records, ray_records):
        if got["path"] != str(deadly):
            np.testing.assert_allclose(ray_array[got["row"]], local_array[want["row"]], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ray_decode_tasks_keep_the_decode_timeout(ray_session, b0_small_dir: Path, photos: list[Path],
                                                  tmp_path: Path) -> None:
    """--decode-timeout reaches Ray's decode tasks: a huge PNG gets the time-limit record, the photos their rows."""
    from effnet_cli.data.limits import timeout_reason
    from tests.test_timeouts import LIMIT, big_png

    huge = big_png(tmp_path / "huge.png")
    out = tmp_path / "ray"
    res = run(["embed", *map(str, photos[:3]), huge, "--model", str(b0_small_dir), "--output-dir", str(out),
               "--engine", "ray", "--ray-actors", "1", "-j", "0", "--decode-timeout", str(LIMIT)])
    assert res.exit_code == 1, res.stderr
    assert f"{huge}: {timeout_reason(LIMIT)}" in res.stderr, res.stderr
    _, records = read_embeddings(out)
    assert sorted(r["path"] for r in records if r.get("error") is None) == sorted(map(str, photos[:3]))


@pytest.mark.slow
def test_ray_runs_an_efficientnetv2_model_as_the_local_engine(ray_session, photos: list[Path], tmp_path: Path) -> None:
    """A converted EfficientNetV2 (Fused-MBConv stages) in Ray's model actors: the local run's rows and records."""
    timm = pytest.importorskip("timm")
    import torch

    from effnet_cli.convert import convert_checkpoint
    from tests.test_convert import randomize, save_safetensors

    source = randomize(timm.create_model("tf_efficientnetv2_b0", pretrained=False), seed=5)
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.mul_(0.5)  # well conditioned in float32 through the random blocks
    model = tmp_path / "v2"
    convert_checkpoint(save_safetensors(source, tmp_path / "w.safetensors"), model, arch="tf_efficientnetv2_b0")
    processor = json.loads((model / "preprocessor_config.json").read_text())
    processor.update(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    (model / "preprocessor_config.json").write_text(json.dumps(processor))
    inputs = _inputs(photos, tmp_path)
    common = [*inputs, "--model", str(model), "--shard-size", "3", "-j", "0", "--backend", "torch"]
    local = run(["embed", *common, "--output-dir", str(tmp_path / "local")])
    remote = run(["embed", *common, "--output-dir", str(tmp_path / "ray"), "--engine", "ray", "--ray-actors", "2",
                  "-b", "2"])
    assert local.exit_code == remote.exit_code == 1, remote.stderr  # the corrupt and the missing input
    local_array, local_records = read_embeddings(tmp_path / "local")
    ray_array, ray_records = read_embeddings(tmp_path / "ray")
    assert ray_records == local_records and local_array.shape[1] == 1280
    np.testing.assert_allclose(ray_array, local_array, rtol=1e-5, atol=1e-5)
