"""The benchmark report (benchmarks/report.py): docs/benchmarks.md rendered from a run's results.

tests/data/benchmark_results.json is a results dict as `benchmarks/run.py --json` writes it,
with every key the report reads (numbers modelled on a real run). Rendering it needs no
measurement, torch or model: these tests check that the targets table gives each target
its number and its verdict, that the sections appear in order and only when measured, and
that the template's placeholders are all filled.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
RESULTS = REPO / "tests" / "data" / "benchmark_results.json"


@pytest.fixture(scope="module")
def report() -> Iterator[ModuleType]:
    """benchmarks/report.py, imported as run.py imports it (its folder on sys.path), then forgotten again."""
    path, modules = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import report

        yield report
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:  # the benchmark's modules have generic names (report, prepare)
            if getattr(sys.modules[name], "__file__", "") and str(BENCHMARKS) in sys.modules[name].__file__:
                del sys.modules[name]


@pytest.fixture()
def results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def targets_rows(page: str) -> dict[str, tuple[str, str]]:
    """target -> (measured, verdict), from the page's targets table."""
    section = page.split("## Targets\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[:2] == ["| target | measured |  |", "| --- | --- | --- |"]
    rows = {}
    for line in section[2:]:
        target, measured, verdict = line.removeprefix("| ").removesuffix(" |").split(" | ")
        rows[target] = (measured, verdict)
    return rows


def test_targets_table_gives_each_target_its_number_and_verdict(report: ModuleType, results: dict) -> None:
    rows = targets_rows(report.render(results))
    assert len(rows) == 18
    assert rows["forward b0/224, float32, batch 1: the default backend ≥ 1.0× the best of ONNX Runtime and "
                "OpenVINO used directly"] == ("0.81× (median of 4 rounds: 0.74, 0.78, 0.88, 0.84)", "**not met**")
    assert rows["forward b0/224 in bfloat16: the default backend ≥ 1.0× OpenVINO bf16 used directly"] == (
        "batch 1: 0.98× (median of 4 rounds: 0.97, 1.29, 0.96, 1.00); batch 16: 0.91× (median of 4 rounds: "
        "0.90, 0.91, 0.96, 0.89)", "**not met**")
    # OpenVINO used directly flips a sample photo, but it is shown for comparison, not judged.
    assert rows["bfloat16 (every backend that has it): top-1 equal to float32 on the sample photos and on ≥ 99% "
                "of the camera-sized JPEGs"] == (
        "openvino 260/261 (99.6%), sample photos all equal; torch 260/261 (99.6%), sample photos all equal",
        "**met**")
    assert rows["end to end b7: `effnet classify` ≥ 1.3× `--backend torch`"] == ("1.09× (one round)", "**not met**")
    assert rows["`effnet classify` with a busy process pinned to one core: ≥ 40% of its unloaded steady state"] == (
        "74% (108.3 images/s; rounds: 76%, 73%)", "**met**")
    assert rows["peak RSS of the main process of `effnet classify` b0 ≤ 500 MB"] == (
        "1139 MB (default); torch 1123 MB, onnxruntime 1050 MB, openvino 1140 MB", "**not met**")
    assert rows["forward b0/224/16: effnet ≥ 3× transformers"] == (
        "`optimize()` 4.68× (with glibc's default allocator behaviour: 3.48×)", "**met**")
    assert rows["end to end b0: ≥ 80% of effnet's own forward (default backend, batch 16), steady state"] == (
        "58% (median of pairs: 57%, 58%, 58%)", "**not met**")
    assert rows["`effnet --help` < 0.3 s"] == ("0.118 s (median of 9)", "**met**")
    assert rows["`effnet classify` memory flat from 1,000 to 10,000 files"][1] == "**met**"


def test_a_target_crossing_its_bound_changes_verdict_and_drops_its_explanation(
        report: ModuleType, results: dict) -> None:
    target = ("forward b0/224, float32, batch 16: the default backend ≥ 1.0× the best of ONNX Runtime and "
              "OpenVINO used directly")
    page = report.render(results)
    assert targets_rows(page)[target][1] == "**not met**"
    assert "* Forward at batch 16: the default backend ran openvino (auto's choice in this run) and reached 0.97×" in page

    faster = copy.deepcopy(results)
    for r in faster["forward_ratios"]:
        if r["name"] == "default ÷ best(ONNX Runtime, OpenVINO)" and r["batch"] == 16:
            r["per_round"], r["median"] = [1.02, 1.06], 1.04
    page = report.render(faster)
    assert targets_rows(page)[target] == ("1.04× (median of 2 rounds: 1.02, 1.06)", "**met**")
    assert "Forward at batch 16:" not in page
    assert "* Forward at batch 1: the default backend ran openvino" in page


def test_sections_in_order_and_placeholders_filled(report: ModuleType, results: dict) -> None:
    page = report.render(results)
    headings = [line for line in page.splitlines() if line.startswith("#")]
    assert headings == [
        "# Benchmarks", "## Machine", "## Targets", "## Model forward", "## End to end: JPEG files to top-5",
        "### Steady state: is decoding the bottleneck?", "### Under load: a fair share of a busy machine",
        "### Memory of `effnet classify` per backend", "### Fast decoding: options, time and top-1",
        "### bfloat16 and the other backends: top-1 agreement", "## The command line",
        "## What each optimisation is worth", "### The optimisations, and which were kept",
        "### The fast path in Python: `effnet_cli.optimize`", "### Method and caveats"]
    assert "${" not in page and "$$" not in page
    assert "`$EFFNET_CACHE/exports/auto/`" in page  # a literal dollar of the prose survives the template
    assert page.endswith("timm tf_efficientnet_b7 vs effnet: 3.4e-06.\n")
    assert "AMD EPYC, 2 cores, 23.5 GiB RAM, Linux 6.18.44-fc-v657; no GPU." in page
    assert "| pillow **(default)** | 1.5× | 384 | whole, then crop | 2.58 | 0.64× | 6 of 261 | 0.016 | none |" in page
    assert ("| timm `tf_efficientnet_b7`, channels-last, eager | 0.9 | 4178 | 3.56× | 1.89× |" in page)


def test_sections_not_measured_are_left_out(report: ModuleType, results: dict) -> None:
    page = report.render({"machine": results["machine"], "quick": True})
    assert "**Quick mode: iteration counts too small to quote.**" in page
    assert [line for line in page.splitlines() if line.startswith("## ")] == ["## Machine", "## Targets"]
    assert "Where a target is not met" not in page
    # Every target is still listed, with a dash for what was not measured.
    rows = targets_rows(page)
    assert len(rows) == 11 and set(rows.values()) == {("–", "–")}
    assert page.endswith("(its images/s then covers the second of two batches).\n")


def test_renders_again_from_the_json_file(report: ModuleType, results: dict, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    assert report.main([str(RESULTS), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == report.render(results)


def test_the_ablations_patched_cli_runs_and_patches_what_the_engines_read() -> None:
    # run_ablation.py changes module constants through a `-c` string; a renamed constant or helper
    # would only fail 30 minutes into a benchmark run.
    import subprocess

    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import run_ablation; "
        "print(json.dumps(run_ablation._cli_patched({'DRAFT_MARGIN': 2, 'WORKER_NICE': 19})))"
    )
    command = json.loads(subprocess.run([sys.executable, "-c", script, str(BENCHMARKS)], check=True,
                                        capture_output=True, text=True, cwd=REPO).stdout)
    probe = command[2].replace("from effnet_cli.cli.app import main; sys.argv[0] = 'effnet'; main()",
                               "import effnet_cli.runtime.engine as e, effnet_cli.data.decode as d; "
                               "print(d.draft_options({'shortest_edge': 100}), e.WORKER_NICE)")
    shown = subprocess.run([sys.executable, "-c", probe, "classify"], check=True, capture_output=True, text=True)
    assert shown.stdout.split() == ["{'draft_size':", "(200,", "200)}", "19"]
    help_run = subprocess.run([*command, "classify", "--help"], capture_output=True, text=True, cwd=REPO)
    assert help_run.returncode == 0, help_run.stderr
