"""``from_pretrained`` / ``save_pretrained``, shared by the config, the image processor and the models.

The mixin does what the three have in common: it consumes the download keywords
(``revision``, ``cache_dir``, ``local_files_only``), turns a name, hub id or path
into local files (:class:`Located`), refuses ``push_to_hub`` with the same error
in every class, and prepares the directory a save writes into. Each class then
reads or writes its own files through two hooks, ``_from_located`` and
``_save_files``. transformers' loader keywords that change nothing here are
consumed in this module too (:data:`LOADER_KWARGS`, each class's
:attr:`PretrainedMixin.loader_kwargs`): accepted by ``from_pretrained`` and
``from_dict`` alike, and never stored as a field, so that a save -> load -> save
round trip through transformers' own loaders writes the same file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from effnet_cli.errors import ConfigError, ConfigFileError
from effnet_cli.weights.resolve import resolve_files

# What transformers' file loaders take out of every from_pretrained's keywords before from_dict sees them
# (the download options effnet uses, revision, cache_dir and local_files_only, are from_pretrained's parameters).
LOADER_KWARGS = frozenset({"force_download", "resume_download", "proxies", "token", "subfolder", "_from_pipeline",
                           "_from_auto", "_commit_hash"})
# The config loader takes these too (the image processor's leaves trust_remote_code to return_unused_kwargs).
CONFIG_LOADER_KWARGS = LOADER_KWARGS | {"trust_remote_code", "gguf_file"}
# transformers model-loading keywords that change nothing for a local, single-device, eager model.
IGNORED_LOADER_KWARGS = CONFIG_LOADER_KWARGS | {
    "low_cpu_mem_usage", "use_safetensors", "attn_implementation", "weights_only", "key_mapping",
}
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


def read_json(path: str | Path, what: str, not_json: str = "valid JSON") -> Any:
    """The parsed JSON of the ``what`` (e.g. "config file") at ``path``.

    Raises:
        ConfigFileError: the file is missing, unreadable or not JSON (``f"{path} is not {not_json} (…)."``);
            also an ``OSError``, as transformers raises for a config it cannot find or read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"No {what} at {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path} is not a readable {what} ({exc}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path} is not {not_json} ({exc}).") from None


def split_from_dict_kwargs(kwargs: dict[str, Any], applies: Callable[[str], bool],
                           consumed: frozenset[str] = frozenset()) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """transformers' ``from_dict(data, **kwargs)`` rule: ``(applied, unused, return_unused_kwargs)``.

    Keywords for which ``applies`` is true are set on the object and ``consumed`` ones (transformers'
    telemetry such as ``_from_auto``) are dropped; any other keyword (a loader's ``revision``,
    ``cache_dir``…) is never stored, and comes back beside the object with ``return_unused_kwargs=True``.
    """
    kwargs = dict(kwargs)
    return_unused = bool(kwargs.pop("return_unused_kwargs", False))
    applied = {key: value for key, value in kwargs.items() if applies(key)}
    unused = {key: value for key, value in kwargs.items() if key not in applied and key not in consumed}
    return applied, unused, return_unused


class PretrainedMixin:
    """transformers' ``from_pretrained`` / ``save_pretrained`` over two hooks each class provides."""

    # The class's own file in a model directory (config.json...); None when it reads the whole directory.
    pretrained_file: ClassVar[str | None] = None
    # transformers' loader keywords from_pretrained accepts and drops before the class sees the others.
    loader_kwargs: ClassVar[frozenset[str]] = LOADER_KWARGS

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None, *, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool | None = None,
                        **kwargs: Any) -> Any:
        """Load from a directory, one of its files, a variant name (``b0`` … ``b7``, ``lite0``) or a hub id.

        ``revision``, ``cache_dir`` and ``local_files_only`` choose the hub files; transformers'
        other loading options (``token``, ``force_download``, ``subfolder``, ``_from_auto``…, see
        :attr:`loader_kwargs`) are accepted and never stored; other keyword arguments go to the
        class (see its ``_from_located``). A name that cannot be found or read raises an ``OSError``
        (:class:`~effnet_cli.errors.LoadError`, :class:`~effnet_cli.errors.ConfigFileError`).
        """
        kwargs = {key: value for key, value in kwargs.items() if key not in cls.loader_kwargs}
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
