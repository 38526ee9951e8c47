"""``effnet export``: ONNX and OpenVINO files that other runtimes run with effnet's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet_cli.runtime.export import sample_pixels
from effnet_cli.hub import load_pretrained
from tests.cli_helpers import run

pytest.importorskip("onnxruntime")


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def onnx_export(b0_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One export for the module, verified on the sample photos."""
    from tests.conftest import IMAGES

    out = tmp_path_factory.mktemp("export") / "b0-onnx"
    outcome = run(["export", str(b0_small_dir), "-o", str(out), "--verify", str(IMAGES)])
    assert outcome.exit_code == 0, outcome.stderr
    return out, outcome.stdout


def test_onnx_export_runs_in_plain_onnxruntime_without_effnet(onnx_export, b0_small_dir, photos, tmp_path):
    out, _ = onnx_export
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "preprocessor_config.json"]
    model, processor = load_pretrained(b0_small_dir)
    pixels = sample_pixels(processor, photos)
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    # An isolated interpreter in which effnet_cli and torch cannot be imported: only onnxruntime and numpy.
    script = textwrap.dedent(f"""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("effnet_cli", "torch"):
                    raise ImportError(name + " must not be needed")
        sys.meta_path.insert(0, Refuse())
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession({str(out / "model.onnx")!r}, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        got = session.run(None, {{"pixel_values": np.load({str(tmp_path / "pixels.npy")!r})}})
        np.save({str(tmp_path / "logits.npy")!r}, got[names.index("logits")])
        assert "effnet_cli" not in sys.modules and "torch" not in sys.modules
        print(",".join(names))
    """)
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "logits,features,features_max"
    with torch.inference_mode():
        want = model(pixels).logits.numpy()
    assert relative_error(np.load(tmp_path / "logits.npy"), want) <= 1e-4
    config = json.loads((out / "preprocessor_config.json").read_text())
    assert config["size"] == {"height": 64, "width": 64}  # the preprocessing travels with the export


def test_export_directory_and_files_follow_the_umask(onnx_export):
    import os
    import stat

    out, _ = onnx_export
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # a private mkdtemp directory was 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o666 & ~umask}


def test_export_summary_and_verify_on_photos(onnx_export, photos):
    _, summary = onnx_export
    assert "input N×3×64×64" in summary and "outputs logits, features, features_max" in summary
    assert f"top-1 equal: {len(photos)}/{len(photos)}" in summary
    relative = [float(line.rsplit("relative ", 1)[1]) for line in summary.splitlines() if "relative" in line]
    assert len(relative) == 3 and max(relative) <= 1e-4


def test_openvino_export_with_fixed_batch_and_image_size(b0_small_dir, photos, tmp_path):
    ov = pytest.importorskip("openvino")
    out = tmp_path / "ov"
    outcome = run(["export", str(b0_small_dir), "-o", str(out), "--format", "openvino", "--batch", "2",
                   "--image-size", "48", "--verify", str(photos[0])])
    assert outcome.exit_code == 0, outcome.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.bin", "model.xml",
                                                     "preprocessor_config.json"]
    model = ov.Core().read_model(str(out / "model.xml"))
    assert list(model.inputs[0].get_shape()) == [2, 3, 48, 48]
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 48, "width": 48}
    assert "top-1 equal: 1/1" in outcome.stdout


def test_export_refusals_are_one_line(b0_small_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    for args, words in (
        (["-o", str(tmp_path / "taken")], "already exists"),
        (["-o", str(tmp_path / "x"), "--dtype", "bfloat16"], "bfloat16"),
        (["-o", str(tmp_path / "x"), "--batch", "0"], "--batch"),
        (["-o", str(tmp_path / "x"), "--image-size", "big"], "--image-size"),
    ):
        outcome = run(["export", str(b0_small_dir), *args])
        assert outcome.exit_code == 2, (args, outcome.stderr)
        assert words in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_an_earlier_export_whole(onnx_export, b0_small_dir, tmp_path):
    import shutil

    out = tmp_path / "exp"
    shutil.copytree(onnx_export[0], out)  # an earlier export (the module's, 64 px)
    again = run(["export", str(b0_small_dir), "-o", str(out), "--image-size", "40"])
    assert again.exit_code == 2 and "--overwrite" in again.stderr  # refused, and told how to go on
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 64, "width": 64}
    pytest.importorskip("openvino")
    # Another format: the earlier model.onnx must go too, not sit beside model.xml.
    outcome = run(["export", str(b0_small_dir), "-o", str(out), "--format", "openvino", "--image-size", "40",
                   "--overwrite"])
    assert outcome.exit_code == 0, outcome.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.bin", "model.xml",
                                                     "preprocessor_config.json"]
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 40, "width": 40}
    assert not [p for p in tmp_path.iterdir() if p.name != "exp"]  # no directory set aside is left behind


def test_overwrite_never_touches_a_directory_with_other_files(onnx_export, b0_small_dir, tmp_path):
    import shutil

    out = tmp_path / "exp"
    shutil.copytree(onnx_export[0], out)
    (out / "notes.txt").write_text("mine")
    (out / "model.bin").mkdir()  # an export's name, but not a file effnet wrote
    before = sorted(p.name for p in out.iterdir())
    outcome = run(["export", str(b0_small_dir), "-o", str(out), "--overwrite"])
    assert outcome.exit_code == 2 and len(outcome.stderr.strip().splitlines()) == 1
    assert "did not write" in outcome.stderr and "model.bin" in outcome.stderr
    assert sorted(p.name for p in out.iterdir()) == before and (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # one more export: about ten seconds
def test_export_model_overwrite_in_the_library(onnx_export, b0_small_dir, tmp_path):
    import shutil

    from effnet_cli.errors import InputError
    from effnet_cli.runtime.export import export_model

    model, processor = load_pretrained(b0_small_dir)
    out = tmp_path / "exp"
    shutil.copytree(onnx_export[0], out)
    with pytest.raises(InputError, match="--overwrite"):
        export_model(model, processor, out, image_size=(40, 40))
    result = export_model(model, processor, out, image_size=(40, 40), overwrite=True)
    assert result.image_size == (40, 40) and result.files == sorted(out.iterdir())


def test_squeeze_excitation_means_are_global_average_pools(onnx_export):
    """ONNX Runtime keeps GlobalAveragePool in its blocked layout; ReduceMean made it reorder every SE block."""
    import onnx

    out, _ = onnx_export
    graph = onnx.load(str(out / "model.onnx")).graph
    kinds = [node.op_type for node in graph.node]
    reduces = [node for node in graph.node if node.op_type == "Conv" and "squeeze_excite.reduce" in node.input[1]]
    assert kinds.count("GlobalAveragePool") == len(reduces) > 0  # one per block with squeeze-and-excitation
    pools = {node.output[0] for node in graph.node if node.op_type == "GlobalAveragePool"}
    assert {node.input[0] for node in reduces} == pools  # and each feeds its block's reduce convolution
    # The pooled features output drops the spatial axes, which GlobalAveragePool keeps: it stays a mean.
    means = [node for node in graph.node if node.op_type == "ReduceMean"]
    assert [node.output[0] for node in means] == ["features"]


def test_an_export_of_an_older_graph_is_not_found_in_the_index(b0_small_dir, tmp_path, monkeypatch):
    from effnet_cli.runtime import index

    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"onnx")
    monkeypatch.setattr(index, "GRAPH_VERSION", index.GRAPH_VERSION - 1)
    index.record_export(b0_small_dir, "onnx", export, cache=tmp_path)
    assert index.find_export(b0_small_dir, "onnx", cache=tmp_path) == export
    monkeypatch.undo()
    assert index.find_export(b0_small_dir, "onnx", cache=tmp_path) is None  # made again by this version
