"""``from_pretrained`` / ``save_pretrained``, shared by the config, the image processor and the models.

The mixin does what the three have in common: it consumes the download keywords
(``revision``, ``cache_dir``, ``local_files_only``), turns a name, hub id or path
into local files (:class:`Located`), refuses ``push_to_hub`` with the same error
in every class, and prepares the directory a save writes into. Each class then
reads or writes its own files through two hooks, ``_from_located`` and
``_save_files``. transformers' loader keywords that change nothing here are
consumed in this module too (:data:`IGNORED_LOADER_KWARGS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from effnet_cli.errors import ConfigError
from effnet_cli.weights.resolve import resolve_files

# transformers keywords that change nothing for a local, single-device, eager model.
IGNORED_LOADER_KWARGS = frozenset({
    "trust_remote_code", "low_cpu_mem_usage", "use_safetensors", "attn_implementation", "token",
    "force_download", "proxies", "subfolder", "_from_auto", "weights_only", "key_mapping",
})
PUSH_REFUSED = "push_to_hub is not supported; upload the saved directory with `hf upload`."


@dataclass(frozen=True)
class Located:
    """Where ``from_pretrained``'s files are: a model directory, the class's own file, and their origin."""

    directory: Path | None  # the model directory; None for weights given in memory or a lone JSON file's folder
    file: Path | None  # the class's own file (config.json, preprocessor_config.json), when it has one
    source: dict[str, str]  # where the files came from, e.g. {"source": "hub", "repo_id": ..., "revision": ...}
    download: dict[str, Any] = field(default_factory=dict)  # revision, cache_dir, local_files_only: for further reads


def locate(name_or_path: str | Path | None, filename: str | None, *, revision: str | None = None,
           cache_dir: str | Path | None = None, local_files_only: bool | None = None) -> Located:
    """The files a ``from_pretrained`` call names.

    ``filename`` is the class's own file: a path to that file (or any JSON file of
    its kind) is read as it is; a directory, variant name or hub id is resolved to a
    model directory holding it. ``None`` stands for weights given in memory.
    """
    download = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if name_or_path is None:
        if filename is not None:
            raise ConfigError(f"from_pretrained needs a directory, variant name or hub id to read {filename} from.")
        return Located(None, None, {"source": "memory"}, download)
    path = Path(str(name_or_path)).expanduser()
    if filename is not None and path.is_file():
        return Located(None, path, {"source": "local", "path": str(path)}, download)
    directory, source = resolve_files(name_or_path, **download)
    return Located(directory, directory / filename if filename else None, source, download)


def prepare_save_directory(directory: str | Path, *, push_to_hub: bool = False) -> Path:
    """The directory a ``save_pretrained`` writes into, created if needed; ``push_to_hub`` is refused."""
    from effnet_cli.output import make_dir

    if push_to_hub:
        raise ConfigError(PUSH_REFUSED)
    directory = Path(directory)
    if directory.is_file():
        raise ConfigError(f"{directory} is a file; save_pretrained wants a directory.")
    return make_dir(directory)


class PretrainedMixin:
    """transformers' ``from_pretrained`` / ``save_pretrained`` over two hooks each class provides."""

    # The class's own file in a model directory (config.json...); None when it reads the whole directory.
    pretrained_file: ClassVar[str | None] = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None, *, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool | None = None,
                        **kwargs: Any) -> Any:
        """Load from a directory, one of its files, a variant name (``b0`` … ``b7``, ``lite0``) or a hub id.

        ``revision``, ``cache_dir`` and ``local_files_only`` choose the hub files;
        other keyword arguments go to the class (see its ``_from_located``).
        """
        located = locate(name_or_path, cls.pretrained_file, revision=revision, cache_dir=cache_dir,
                         local_files_only=local_files_only)
        return cls._from_located(located, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *, push_to_hub: bool = False, **kwargs: Any) -> Any:
        """Write this object's files into ``save_directory`` (created if needed), as transformers does.

        ``push_to_hub=True`` is refused (:class:`ConfigError`, a ``ValueError``); transformers'
        other keywords (``safe_serialization``, ``max_shard_size``…) are accepted and change nothing.
        """
        return self._save_files(prepare_save_directory(save_directory, push_to_hub=push_to_hub))

    @classmethod
    def _from_located(cls, located: Located, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _save_files(self, directory: Path) -> Any:
        raise NotImplementedError
