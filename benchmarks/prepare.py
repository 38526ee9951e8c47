"""Inputs for the benchmark: one set of weights in every library's layout, and the test images.

Nothing is downloaded. The weights are seeded random numbers with realistic
statistics (He-initialised convs, batch-norm statistics away from the
identity, so that folding them is real work and activations neither vanish
into denormals nor explode), written once in effnet's layout and converted to
the others':

* effnet: ``effnet_cli.hub.save_pretrained`` with the hub's preprocessing, the
  directory ``effnet classify --model DIR`` reads;
* transformers: loaded from that directory by transformers itself and written
  back with its own ``save_pretrained`` plus its image processor's config;
* torchvision and timm: the same tensors, matched by position. All four
  implementations register their parameters in the same order (stem, then
  per block expand / depthwise / squeeze-excite / project, head, classifier),
  every shape is checked, and :func:`verify_mapping` compares outputs where
  the architectures coincide exactly (torchvision with symmetric padding and
  its eps; timm's ``tf_`` models, whose TF padding equals the hub's at the
  native size).

The images are camera-sized JPEGs (640-1600 px on the long side) made from the
sample photos in tests/data/images by random crops, resizes and flips, and tiny
JPEGs for the memory-flatness run (hard links, so discovery sees distinct files).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
OUT = ROOT / "out"  # weights and scratch files (git-ignored)
DATA = ROOT / "data"  # generated images (git-ignored)
SAMPLES = REPO / "tests" / "data" / "images"

# variant -> (native input size, torchvision builder, timm model name)
VARIANTS: dict[str, tuple[int, str, str]] = {
    "b0": (224, "efficientnet_b0", "efficientnet_b0"),
    "b7": (600, "efficientnet_b7", "tf_efficientnet_b7"),
}


def init_realistic(model: Any, seed: int = 0) -> None:
    """Seeded weights with trained-network-like statistics, in place."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", generator=gen)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.05, generator=gen)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.8, 1.2, generator=gen)
                module.bias.normal_(0.0, 0.1, generator=gen)
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
            elif isinstance(module, nn.Linear):
                # Large enough that the softmax is not flat: top-5 orders are well defined.
                module.weight.normal_(0.0, 4.0 / module.in_features ** 0.5, generator=gen)
                module.bias.zero_()


def effnet_dir(variant: str) -> Path:
    return OUT / "weights" / f"effnet-{variant}"


def small_input_dir() -> Path:
    """b0 weights whose preprocessing resizes to 64 px: the memory run's model, fast over many files."""
    return OUT / "weights" / "effnet-b0-64px"


def hf_dir(variant: str) -> Path:
    return OUT / "weights" / f"transformers-{variant}"


def make_weights(variant: str, *, input_size: int | None = None, name: str | None = None) -> Path:
    """Write the seeded effnet checkpoint for ``variant`` (once) and return its directory.

    ``input_size`` overrides the preprocessing's size (the memory run uses a small one).
    """
    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.hub import default_processor, save_pretrained

    directory = OUT / "weights" / name if name else effnet_dir(variant)
    if (directory / "model.safetensors").is_file():
        return directory
    config = EfficientNetConfig.from_variant(variant)
    model = EfficientNetForImageClassification(config).eval()
    init_realistic(model)
    processor = default_processor(config)
    if input_size is not None:
        processor = processor.replace(size={"height": input_size, "width": input_size})
    save_pretrained(model, directory, processor)
    return directory


def make_hf_weights(variant: str) -> Path:
    """The same checkpoint written by transformers' own save_pretrained, with its image processor config."""
    from transformers import AutoImageProcessor, EfficientNetForImageClassification

    directory = hf_dir(variant)
    if (directory / "model.safetensors").is_file():
        return directory
    source = effnet_dir(variant)
    model = EfficientNetForImageClassification.from_pretrained(source)
    model.save_pretrained(directory)
    AutoImageProcessor.from_pretrained(source).save_pretrained(directory)
    return directory


def _parameters(state: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def map_by_position(ours: dict[str, Any], target: Any) -> dict[str, Any]:
    """Our tensors under ``target``'s key names, matched by registration order, every shape checked."""
    src = _parameters(ours)
    dst = _parameters(target.state_dict())
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} tensors here, {len(dst)} in {type(target).__name__}")
    mapped = {}
    for (our_key, tensor), (their_key, theirs) in zip(src, dst):
        if tensor.shape != theirs.shape:
            raise ValueError(f"{our_key} {tuple(tensor.shape)} does not fit {their_key} {tuple(theirs.shape)}")
        mapped[their_key] = tensor
    return mapped


def load_effnet_state(variant: str) -> dict[str, Any]:
    """Our checkpoint's tensors in the model's registration order (the file stores them sorted by name)."""
    import torch

    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.hub import read_state_dict

    tensors = read_state_dict(effnet_dir(variant) / "model.safetensors")
    config = EfficientNetConfig.from_json_file(effnet_dir(variant) / "config.json")
    with torch.device("meta"):
        order = list(EfficientNetForImageClassification(config).state_dict())
    return {key: tensors[key] for key in order}


def torchvision_model(variant: str) -> Any:
    """torchvision's architecture holding our weights (eval mode)."""
    import torchvision

    model = getattr(torchvision.models, VARIANTS[variant][1])()
    model.load_state_dict(map_by_position(load_effnet_state(variant), model), strict=False)
    return model.eval()


def timm_model(variant: str) -> Any:
    """timm's architecture holding our weights (eval mode)."""
    import timm

    model = timm.create_model(VARIANTS[variant][2], pretrained=False)
    model.load_state_dict(map_by_position(load_effnet_state(variant), model), strict=False)
    return model.eval()


def verify_mapping() -> dict[str, float]:
    """Max relative logit difference where two architectures coincide exactly; should be ~1e-6."""
    import torch

    from effnet_cli import EfficientNetConfig, EfficientNetForImageClassification
    from effnet_cli.hub import load_weights

    results = {}
    state = load_effnet_state("b0")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        # torchvision b0 pads symmetrically and uses eps 1e-5.
        config = EfficientNetConfig.from_variant("b0", padding_mode="symmetric", batch_norm_eps=1e-5)
        ours = EfficientNetForImageClassification(config).eval()
        load_weights(ours, state)
        want = ours(x).logits
        got = torchvision_model("b0")(x)
        results["torchvision efficientnet_b0"] = float((got - want).abs().max() / want.abs().max())
        # timm's tf_efficientnet_b7 pads like TF, which the hub's fixed padding equals at 600 px.
        if (effnet_dir("b7") / "model.safetensors").is_file():
            from effnet_cli import load_pretrained

            ours7, _ = load_pretrained(str(effnet_dir("b7")))
            x7 = torch.randn(1, 3, 600, 600)
            want = ours7(x7).logits
            got = timm_model("b7")(x7)
            results["timm tf_efficientnet_b7"] = float((got - want).abs().max() / want.abs().max())
    return results


# ------------------------------------------------------------------ images
def camera_jpegs(count: int, *, seed: int = 0) -> list[Path]:
    """``count`` camera-sized JPEGs (640-1600 px long side) made from the sample photos; made once."""
    from PIL import Image, ImageOps

    directory = DATA / f"camera-{count}"
    paths = [directory / f"img{i:04d}.jpg" for i in range(count)]
    if all(p.is_file() for p in paths):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = sorted(SAMPLES.glob("*.jpg"))
    photos = [Image.open(p).convert("RGB") for p in sources]
    for i, path in enumerate(paths):
        img = photos[i % len(photos)]
        w, h = img.size
        # A random crop of 60-100% of each side, then a camera-like size and aspect.
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((left, top, left + cw, top + ch))
        long_side = rng.randint(640, 1600)
        aspect = rng.choice((4 / 3, 3 / 2, 16 / 9, 1.0))
        size = (long_side, int(long_side / aspect)) if rng.random() < 0.7 else (int(long_side / aspect), long_side)
        out = crop.resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            out = ImageOps.mirror(out)
        out.save(path, "JPEG", quality=rng.randint(85, 95))
    return paths


def camera_passes(count: int, passes: int) -> list[Path]:
    """``passes`` hard links to each of the ``count`` camera JPEGs: distinct paths, so every one is decoded.

    For throughput in steady state: 256 files are only 16 batches, most of which the
    decode workers have ready before the model is; several passes over the same
    files keep decode and model running side by side for long enough to measure.
    """
    sources = camera_jpegs(count)
    directory = DATA / f"camera-{count}-x{passes}"
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(passes):
        for src in sources:
            link = directory / f"p{k}-{src.name}"
            if not link.exists():
                os.link(src, link)
            out.append(link)
    return out


def tiny_jpegs(count: int) -> Path:
    """A directory of ``count`` distinct paths (hard links to a few 64×64 JPEGs), for the memory run."""
    from PIL import Image

    directory = DATA / f"tiny-{count}"
    if directory.is_dir() and len(os.listdir(directory)) == count:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    base = DATA / "tiny-sources"
    base.mkdir(parents=True, exist_ok=True)
    sources = []
    for j, sample in enumerate(sorted(SAMPLES.glob("*.jpg"))):
        target = base / f"tiny{j}.jpg"
        if not target.is_file():
            Image.open(sample).convert("RGB").resize((64, 64), Image.BILINEAR).save(target, "JPEG", quality=90)
        sources.append(target)
    for i in range(count):
        link = directory / f"t{i:06d}.jpg"
        if not link.exists():
            os.link(sources[i % len(sources)], link)
    return directory


# ------------------------------------------------------------------ machine
def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and library versions, for the report."""
    import numpy
    import PIL
    import timm
    import torch
    import torchvision
    import transformers

    import effnet_cli

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    return {
        "cpu": cpu, "cores": cores, "ram_gib": round(mem_gib, 1) if mem_gib else None,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "transformers": transformers.__version__,
        "timm": timm.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__,
        "effnet": effnet_cli.__version__, "commit": commit, "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    """Make every weight directory and image set run.py needs; print the machine and mapping check as JSON."""
    # No options: the parser is there so that --help describes the script instead of running it.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for variant in VARIANTS:
        make_weights(variant)
        make_hf_weights(variant)
    make_weights("b0", input_size=64, name=small_input_dir().name)
    camera_jpegs(256)
    print(json.dumps({"machine": machine_info(), "mapping": verify_mapping()}))


if __name__ == "__main__":
    main()
