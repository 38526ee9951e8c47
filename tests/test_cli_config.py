"""`effnet config list/show/save` end to end, and the analytic parameter/MAC counts behind them.

The counts in `effnet_cli.core.flops` are pure arithmetic; here they are checked
against the real thing: `num_parameters()` of the built model, the published
parameter counts, and torch's FlopCounterMode (which counts 2 FLOPs per
multiply-add). Models are built on the meta device, so no weights are allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from effnet_cli.cli.app import app
from effnet_cli.cli.render import run_app
from effnet_cli.core.config import VARIANTS, EfficientNetConfig
from effnet_cli.core.flops import network_cost

# Published parameter counts (1000-class head) of the reference models.
PUBLISHED_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
    "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960,
}


class _Outcome:
    """Exit code and captured streams of one in-process run."""

    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


def _run(*args: str) -> _Outcome:
    """Run the app in-process as the console script does (our error handling included), via Typer's runner."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _mixed):
        code = run_app(app, list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        return _Outcome(code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture(autouse=True)
def _terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render tables as for a standard 80-column terminal, whatever the test runner's environment says."""
    monkeypatch.setenv("COLUMNS", "80")


def _meta_model(config: EfficientNetConfig):
    """effnet's classifier for ``config`` on the meta device: shapes only, built in milliseconds."""
    import torch

    from effnet_cli.core.model import EfficientNetForImageClassification

    with torch.device("meta"):
        return EfficientNetForImageClassification(config).eval()


# ------------------------------------------------------------ the arithmetic
@pytest.mark.parametrize("name", list(VARIANTS))
def test_analytic_params_equal_the_built_model(name: str) -> None:
    config = EfficientNetConfig.from_variant(name)
    expected = _meta_model(config).num_parameters()
    assert network_cost(config).params == expected
    if name in PUBLISHED_PARAMS:
        assert expected == PUBLISHED_PARAMS[name]


def test_analytic_params_follow_the_head_size() -> None:
    for labels in (0, 10):
        config = EfficientNetConfig.from_variant("b1", num_labels=labels, id2label=None, label2id=None)
        assert network_cost(config).params == _meta_model(config).num_parameters()


@pytest.mark.parametrize(("name", "size", "padding"), [
    ("b0", 224, None),        # the paper's number
    ("b0", 225, None),        # "fixed" padding at an odd size: the stem floors
    ("b3", 300, None),
    ("lite0", 225, None),     # TF-'same' at an odd size: every stride-2 conv ceils
    ("b2", 231, "symmetric"),
])
def test_analytic_macs_equal_flop_counter(name: str, size: int, padding: str | None) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = EfficientNetConfig.from_variant(name, **({"padding_mode": padding} if padding else {}))
    model = _meta_model(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    cost = network_cost(config, size)
    # FlopCounterMode counts a multiply-add as 2 FLOPs; we report multiply-adds.
    assert counter.get_total_flops() == 2 * cost.macs == cost.flops


def test_b0_macs_match_the_paper() -> None:
    macs = network_cost(EfficientNetConfig.from_variant("b0")).macs
    assert abs(macs / 0.39e9 - 1) < 0.02, macs  # the paper: 0.39B FLOPs, counted as multiply-adds


# ------------------------------------------------------------------- list
def test_list_table_shows_every_variant_with_its_params() -> None:
    res = _run("config", "list")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    for name in VARIANTS:
        row = next((line for line in lines if line.split() and line.split()[0] == name), None)
        assert row is not None, f"{name} missing from:\n{res.stdout}"
        if name in PUBLISHED_PARAMS:
            assert f"{PUBLISHED_PARAMS[name]:,}" in row
        assert f"{VARIANTS[name].top1:.1f}%" in row
    assert "multiply-adds" in res.stdout  # the unit is stated
    assert res.stderr == ""


def test_list_json_is_parseable_and_exact() -> None:
    res = _run("config", "list", "--format", "json")
    assert res.exit_code == 0, res.stderr
    records = {r["name"]: r for r in json.loads(res.stdout)}
    # The V1 variants first, in order; EfficientNetV2's follow (tests/test_cli_config_v2.py).
    assert [n for n, r in records.items() if r["family"] == "efficientnet"] == list(VARIANTS) == list(records)[:13]
    for name, params in PUBLISHED_PARAMS.items():
        assert records[name]["params"] == params
    assert records["b3"]["image_size"] == 300 and records["b3"]["width_coefficient"] == 1.2
    assert records["b0"]["macs"] == network_cost(EfficientNetConfig.from_variant("b0")).macs
    assert records["lite0"]["lite"] is True and records["b0"]["top1"] == 77.1


# ------------------------------------------------------------------- show
B3_STAGE_OUT = [24, 32, 48, 96, 136, 232, 384]
B3_REPEATS = [2, 3, 3, 5, 5, 6, 2]
B3_RESOLUTIONS = [150, 150, 75, 38, 19, 19, 10, 10]  # stem, then stages 1..7, at 300×300


def test_show_b3_json_has_the_scaled_stages() -> None:
    res = _run("config", "show", "b3", "--format", "json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    rows = data["rows"]
    stem, stages, head, fc = rows[0], rows[1:8], rows[8], rows[9]
    assert stem["kind"] == "stem" and stem["out_channels"] == 40
    assert [s["stage"] for s in stages] == [1, 2, 3, 4, 5, 6, 7]
    assert [s["out_channels"] for s in stages] == B3_STAGE_OUT
    assert [s["repeats"] for s in stages] == B3_REPEATS
    assert [r["output_size"] for r in rows[:8]] == B3_RESOLUTIONS
    assert head["out_channels"] == 1536 and fc["out_channels"] == 1000
    totals = data["totals"]
    assert totals["params"] == PUBLISHED_PARAMS["b3"]
    assert totals["blocks"] == sum(B3_REPEATS) and totals["hidden_dim"] == 1536
    assert totals["flops"] == 2 * totals["macs"]
    assert (totals["padding_mode"], totals["hidden_act"]) == ("fixed", "swish")


def test_show_b3_table_rows_and_caption() -> None:
    res = _run("config", "show", "b3")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    stage_rows = [line.split() for line in lines if line[:1].isdigit()]
    assert [int(r[0]) for r in stage_rows] == [1, 2, 3, 4, 5, 6, 7]
    for cells, out, repeats, size in zip(stage_rows, B3_STAGE_OUT, B3_REPEATS, B3_RESOLUTIONS[1:]):
        # stage, MBConvE, kK×K, stride, expand, in, out, blocks, output, params, MACs
        assert (int(cells[6]), int(cells[7]), cells[8]) == (out, repeats, f"{size}×{size}")
    assert "stage:N" in res.stdout  # the caption ties the numbering to `effnet embed --features`
    assert "12,233,232" in res.stdout and "1536 (hidden_dim)" in res.stdout
    assert all(len(line) <= 80 for line in lines), "the table should fit an 80-column terminal"


def test_show_at_another_image_size() -> None:
    res = _run("config", "show", "b0", "--image-size", "320", "-f", "json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["image_size"] == 320 and data["native_image_size"] == 224
    assert [r["output_size"] for r in data["rows"][:8]] == [160, 160, 80, 40, 20, 20, 10, 10]
    assert data["totals"]["macs"] == network_cost(EfficientNetConfig.from_variant("b0"), 320).macs


def test_show_reads_a_directory_and_a_config_json(tmp_path: Path) -> None:
    EfficientNetConfig.from_variant("b2").to_json_file(tmp_path / "config.json")
    by_dir = json.loads(_run("config", "show", str(tmp_path), "-f", "json").stdout)
    by_file = json.loads(_run("config", "show", str(tmp_path / "config.json"), "-f", "json").stdout)
    by_name = json.loads(_run("config", "show", "b2", "-f", "json").stdout)
    by_hub_id = json.loads(_run("config", "show", "google/efficientnet-b2", "-f", "json").stdout)
    assert by_dir["rows"] == by_file["rows"] == by_name["rows"] == by_hub_id["rows"]
    assert by_dir["totals"]["params"] == PUBLISHED_PARAMS["b2"]


# ------------------------------------------------------------------- save
def test_saved_config_builds_the_same_model_in_transformers(tmp_path: Path) -> None:
    import torch
    import transformers

    target = tmp_path / "config.json"
    res = _run("config", "save", "b3", "-o", str(target))
    assert res.exit_code == 0, res.stderr
    ref_config = transformers.EfficientNetConfig.from_json_file(str(target))
    with torch.device("meta"):
        ref_model = transformers.EfficientNetForImageClassification(ref_config)
    assert ref_model.num_parameters() == PUBLISHED_PARAMS["b3"]
    assert ref_config.hidden_dim == 1536 and ref_config.image_size == 300
    assert ref_config.depthwise_padding == EfficientNetConfig.from_variant("b3").depthwise_padding


def test_save_phi_derives_a_variant(tmp_path: Path) -> None:
    res = _run("config", "save", "--phi", "2.5", "-o", str(tmp_path))  # a directory: config.json inside
    assert res.exit_code == 0, res.stderr
    saved = EfficientNetConfig.from_json_file(tmp_path / "config.json")
    expected = EfficientNetConfig.from_compound_scaling(2.5)
    assert (saved.width_coefficient, saved.depth_coefficient, saved.image_size) == (1.27, 1.58, 320)
    assert saved.to_dict() == expected.to_dict()
    for text in ("depth_coefficient", "1.58", "width_coefficient", "1.27", "320", "MBConv6 k5×5", "stage:N"):
        assert text in res.stdout
    assert f"{network_cost(saved).params:,}" in res.stdout


def test_save_lite_warns_that_transformers_ignores_its_fields(tmp_path: Path) -> None:
    res = _run("config", "save", "lite0", "-o", str(tmp_path / "lite0.json"))
    assert res.exit_code == 0
    assert "warning" in res.stderr and "use_squeeze_excite" in res.stderr
    assert EfficientNetConfig.from_json_file(tmp_path / "lite0.json").use_squeeze_excite is False


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize(("args", "message"), [
    (["config", "show", "b9"], "Unknown variant 'b9'"),
    (["config", "save", "b9", "-o", "{tmp}/c.json"], "Unknown variant 'b9'"),
    (["config", "show", "{tmp}/missing/config.json"], "No such file"),
    (["config", "show", "{tmp}/bad.json"], "not a readable JSON config"),
    (["config", "show", "{tmp}/vit.json"], "not an EfficientNet"),
    (["config", "save", "b0", "--phi", "1", "-o", "{tmp}/c.json"], "exactly one of VARIANT or --phi"),
    (["config", "save", "-o", "{tmp}/c.json"], "exactly one of VARIANT or --phi"),
    (["config", "save", "--phi", "inf", "-o", "{tmp}/c.json"], "finite"),
    (["config", "save", "b0"], "--output"),
    (["config", "save", "b0", "-o", "{tmp}/no/such/dir/c.json"], "does not exist"),
    (["config", "show", "b0", "--image-size", "1"], "too small"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "vit.json").write_text('{"model_type": "vit"}')
    res = _run(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert res.exit_code == 2
    assert res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["list", "show", "save"])
def test_help_has_an_example(command: str) -> None:
    res = _run("config", command, "--help")
    assert res.exit_code == 0
    assert "Examples" in res.stdout and f"effnet config {command}" in res.stdout


# ------------------------------------------------------ real processes
def test_real_process_lists_variants_without_importing_torch() -> None:
    proc = subprocess.run([sys.executable, "-m", "effnet_cli", "config", "list"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name, params in PUBLISHED_PARAMS.items():
        assert f"{params:,}" in proc.stdout
    assert all(name in proc.stdout for name in VARIANTS)
    # Pure arithmetic: the config commands must not pay for importing torch.
    probe = ("import sys, io, contextlib\n"
             "from effnet_cli.cli.app import app\nfrom effnet_cli.cli.render import run_app\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    assert run_app(app, ['config', 'show', 'b7']) == 0\n"
             "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_real_process_unknown_variant_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "effnet_cli", "config", "show", "b9"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.startswith("effnet: Unknown variant 'b9'")
    assert len(proc.stderr.splitlines()) == 1
