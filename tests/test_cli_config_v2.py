"""`effnet config` for EfficientNetV2: the variants in `list`, the Fused-MBConv stages in `show`,
parameter and multiply-add counts checked against timm's and torchvision's models (built on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch

from effnet_cli.core.config_v2 import EfficientNetV2Config
from effnet_cli.core.flops import network_cost
from effnet_cli.weights.variants_v2 import V2_VARIANTS
from tests.test_cli_config import _run

timm = pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def _terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def _flops(model: torch.nn.Module, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops()


def test_list_shows_the_v2_variants_with_timm_parameter_counts() -> None:
    res = _run("config", "list", "--format", "json")
    assert res.exit_code == 0, res.stderr
    records = {r["name"]: r for r in json.loads(res.stdout)}
    for name in V2_VARIANTS:
        assert records[name]["family"] == "efficientnet_v2"
        with torch.device("meta"):
            theirs = timm.create_model(f"tf_efficientnetv2_{name.removeprefix('v2-')}")
        assert records[name]["params"] == sum(p.numel() for p in theirs.parameters()), name
    table = _run("config", "list")
    assert "v2-s " in table.stdout and "384×384" in table.stdout and "21,458,488" in table.stdout


def test_show_v2_s_has_its_fused_stages_and_timm_and_torchvision_costs() -> None:
    torchvision = pytest.importorskip("torchvision")
    res = _run("config", "show", "v2-s", "--format", "json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    stages = [r for r in data["rows"] if r["kind"] == "stage"]
    assert [r["block_type"] for r in stages] == ["conv", "fused", "fused", "mbconv", "mbconv", "mbconv"]
    assert [r["operator"] for r in stages][:4] == ["FusedMB1 k3×3", "FusedMB4 k3×3", "FusedMB4 k3×3", "MBConv4 k3×3"]
    assert data["totals"]["hidden_dim"] == 1280 and data["totals"]["blocks"] == 40
    with torch.device("meta"):
        tf_port = timm.create_model("tf_efficientnetv2_s")
        tv = torchvision.models.efficientnet_v2_s()
    assert data["totals"]["params"] == sum(p.numel() for p in tv.parameters())
    # TF-'same' at 384 and torchvision's symmetric padding give the same map sizes, so the same multiply-adds.
    assert data["totals"]["flops"] == _flops(tf_port, 384) == _flops(tv, 384)

    table = _run("config", "show", "v2-s")
    assert table.exit_code == 0 and "FusedMB4 k3×3" in table.stdout and "Fused-MBConv" in table.stdout


@pytest.mark.parametrize(("arch", "size", "padding"), [("tf_efficientnetv2_b0", 97, "same"),
                                                        ("efficientnetv2_rw_t", 97, "symmetric")])
def test_macs_match_timm_at_an_odd_size(arch: str, size: int, padding: str) -> None:
    from effnet_cli.convert.timm import V2_ARCHS

    body, width, depth = V2_ARCHS[arch]
    config = EfficientNetV2Config.from_body(body, width_coefficient=width, depth_coefficient=depth,
                                            padding_mode=padding, num_labels=1000)
    with torch.device("meta"):
        theirs = timm.create_model(arch)
    assert network_cost(config, size).flops == _flops(theirs, size)
    assert network_cost(config).params == sum(p.numel() for p in theirs.parameters())


def test_save_a_v2_config_and_show_it_back(tmp_path) -> None:
    res = _run("config", "save", "v2-b1", "-o", str(tmp_path / "config.json"))
    assert res.exit_code == 0, res.stderr
    assert "transformers has no EfficientNetV2" in res.stderr
    shown = _run("config", "show", str(tmp_path), "--format", "json")
    assert json.loads(shown.stdout)["totals"]["params"] == network_cost(EfficientNetV2Config.from_variant("v2-b1")).params
