"""Shared fixtures: the sample photos and seeded random weights with non-trivial statistics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Set before anything imports huggingface_hub, which reads it once at import: no test may use the network.
os.environ["HF_HUB_OFFLINE"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Under pytest-xdist each worker gets its share of the cores: torch's default of one thread per core
    # in every worker would make them wait on each other.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "tests" / "data" / "images"
if not IMAGES.is_dir():  # before the copy exists, fall back to the shared folder beside the clone
    IMAGES = REPO.parent / "shared" / "images"
PHOTOS = sorted(IMAGES.glob("*.jpg"))


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's caches and from the network."""
    monkeypatch.setenv("EFFNET_CACHE", str(_shared_effnet_cache(tmp_path_factory)))


_CACHE: list[Path] = []


def _shared_effnet_cache(factory: pytest.TempPathFactory) -> Path:
    # One effnet cache per session: converting the bundled weights once is enough.
    if not _CACHE:
        _CACHE.append(factory.mktemp("effnet-cache"))
    return _CACHE[0]


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The real sample photos (cat, espresso, rocket, astronaut, cameraman)."""
    assert PHOTOS, f"sample photos missing under {IMAGES}"
    return PHOTOS


def randomize(model, seed: int = 0, scale: float = 1.0):
    """Seeded random weights that make every layer matter: unit-ish conv weights and real BN statistics.

    The reference's init (std 0.02) makes activations vanish, so agreement on it
    would prove little; these weights keep activations of order one.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * scale / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model


@pytest.fixture(scope="session")
def b0_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loadable b0 directory (config, safetensors, hub preprocessing) with seeded random weights.

    Random logits would tie; scaling the classifier makes the top-k distinct per image.
    """
    import torch

    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.hub import default_processor, save_pretrained

    config = EfficientNetConfig.from_variant("b0")
    model = randomize(EfficientNetForImageClassification(config), seed=11)
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    directory = tmp_path_factory.mktemp("b0-random")
    save_pretrained(model, directory, default_processor(config))
    return directory


@pytest.fixture(scope="session")
def b0_small_dir(b0_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights with 64×64 preprocessing: for tests about files and processes, not numbers."""
    import shutil

    from effnet_cli.core.processor import EfficientNetImageProcessor

    directory = tmp_path_factory.mktemp("b0-small")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(b0_dir / name, directory / name)
    processor = EfficientNetImageProcessor.from_json_file(b0_dir / "preprocessor_config.json")
    processor.replace(size={"height": 64, "width": 64}).to_json_file(directory / "preprocessor_config.json")
    return directory


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: busy 2-core machines make its OpenMP threads wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
