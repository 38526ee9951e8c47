"""A variant name, hub id or local path -> a local directory holding a model's files.

Hub repositories go through huggingface_hub's cache (``HF_HOME``/``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_TOKEN``); once cached, no network is used. Every answer
comes with a description of where the files came from (for the hub, the exact
commit), so runs can report which weights they used. ``lite0`` names the
bundled weights (:mod:`effnet_cli.weights.bundled`), converted into effnet's cache
on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from effnet_cli.errors import LoadError, OfflineError, one_line
from effnet_cli.weights import probe
from effnet_cli.weights.files import CONFIG_NAME, PICKLE_NAME, PROCESSOR_NAME, SAFETENSORS_NAME
from effnet_cli.weights.timm_layout import ensure_timm_converted, is_timm_layout
from effnet_cli.weights.variants import VARIANTS, hub_id_for
from effnet_cli.weights.variants_v2 import V2_VARIANTS


def cache_root() -> Path:
    """effnet's own cache (converted bundled weights): ``$EFFNET_CACHE``, else ``$XDG_CACHE_HOME/effnet``."""
    env = os.environ.get("EFFNET_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "effnet"


def resolve_local(name_or_path: str | Path) -> tuple[Path, dict[str, str]] | None:
    """The directory ``name_or_path`` names on disk (a directory, or its config.json), else None."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return path, {"source": "local", "path": str(path)}
    if path.is_file():
        if path.name == CONFIG_NAME:
            return path.parent, {"source": "local", "path": str(path.parent)}
        raise LoadError(f"{path} is a file; give the directory that holds config.json, or convert it with `effnet convert`.")
    return None


def resolve_files(name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                  local_files_only: bool | None = None) -> tuple[Path, dict[str, str]]:
    """Find a loadable directory for a variant name, hub id or local path.

    Returns the directory and a description of where it came from
    (``{"source": "hub", "repo_id": ..., "revision": <commit>}`` and so on), so
    runs can report exactly which weights they used.
    """
    local = resolve_local(name_or_path)
    if local is not None:
        return local
    text = str(name_or_path)
    key = text.lower()
    if key == "lite0":
        from effnet_cli.weights.bundled import ensure_lite0

        directory = ensure_lite0(cache_root())
        return directory, {"source": "bundled", "name": "lite0", "path": str(directory)}
    if key in VARIANTS and VARIANTS[key].lite:
        raise LoadError(
            f"No pretrained {key} weights ship with effnet; convert timm's tf_efficientnet_{key} checkpoint "
            f"with `effnet convert CKPT --from timm --arch tf_efficientnet_{key} -o DIR` and use --model DIR."
        )
    repo_id = hub_id_for(key) or text
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "/" not in repo_id:
        raise LoadError(
            f"{text!r} is neither a directory, a variant ({', '.join((*VARIANTS, *V2_VARIANTS))}) nor a hub id "
            "like google/efficientnet-b0."
        )
    directory, source = _download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    if is_timm_layout(directory):
        # timm's layout (timm/<arch>.<tag>): converted once into effnet's cache, per commit.
        converted = ensure_timm_converted(directory, cache_root(), repo_id)
        return converted, {**source, "converted_from": "timm", "path": str(converted)}
    return directory, source


def _download(repo_id: str, *, revision: str | None, cache_dir: str | Path | None,
              local_files_only: bool | None) -> tuple[Path, dict[str, str]]:
    """The snapshot folder of ``repo_id`` holding config, preprocessing and weights, all from one commit.

    The hub is probed first with a short connection attempt: without a network,
    huggingface_hub would retry for half a minute before giving up. Unreachable
    means the local cache, exactly as ``HF_HUB_OFFLINE=1`` would.
    """
    from huggingface_hub import constants as hub_constants

    pinned = f"{repo_id}{'@' + revision if revision else ''}"
    offline = bool(local_files_only) or probe.env_true("HF_HUB_OFFLINE") or bool(hub_constants.HF_HUB_OFFLINE)
    why = "HF_HUB_OFFLINE is set" if offline else None
    if not offline:
        host = probe.unreachable(hub_constants.ENDPOINT)
        if host is not None:
            offline, why = True, f"{host} cannot be reached"
    fix = (f"download it once with `hf download {repo_id}{' --revision ' + revision if revision else ''}`"
           + ("" if why == "HF_HUB_OFFLINE is set" else ", set HF_HUB_OFFLINE=1 to use only the cache")
           + ", or give a local directory with --model DIR")
    with _quiet_hub_logs():
        # config.json and the preprocessing and safetensors weights where the repository has them: one
        # call resolves the revision to a commit once, and everything below comes from that commit.
        directory = _snapshot(repo_id, revision, [CONFIG_NAME, PROCESSOR_NAME, SAFETENSORS_NAME], cache_dir,
                              offline, pinned, why, fix)
        if not (directory / SAFETENSORS_NAME).is_file():
            # Older repositories (google/efficientnet-b*) hold a pickle instead; fetch it from the same commit.
            directory = _snapshot(repo_id, directory.name, [PICKLE_NAME], cache_dir, offline, pinned, why, fix)
    if not (directory / CONFIG_NAME).is_file():
        raise LoadError(f"{pinned} has no {CONFIG_NAME}; it is not a transformers-style model repository.")
    if not (directory / SAFETENSORS_NAME).is_file() and not (directory / PICKLE_NAME).is_file():
        raise LoadError(f"{pinned} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}.")
    # The snapshot folder is named after the commit: report it so a run can be reproduced.
    return directory, {"source": "hub", "repo_id": repo_id, "revision": directory.name}


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], cache_dir: str | Path | None,
              offline: bool, pinned: str, why: str | None, fix: str) -> Path:
    """``snapshot_download`` restricted to ``patterns``, with its exceptions turned into effnet's one sentence."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import utils as hub_errors  # the error classes live here in every release since 0.20

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                      local_files_only=offline))
    # LocalEntryNotFoundError subclasses EntryNotFoundError (an HTTP error in older releases): test it first.
    except hub_errors.LocalEntryNotFoundError:
        reason = why or "the hub could not be reached"
        raise OfflineError(f"{pinned} is not in the local Hugging Face cache and {reason}; {fix}.") from None
    except hub_errors.RevisionNotFoundError:
        raise LoadError(f"{repo_id} has no revision {revision!r}.") from None
    except hub_errors.RepositoryNotFoundError:
        raise LoadError(f"{repo_id} is not a hub repository you can access (check the name, or set HF_TOKEN).") from None
    except hub_errors.HfHubHTTPError as exc:
        raise LoadError(f"The hub refused {pinned}: {one_line(exc, upto='line')}.") from None
    except OSError as exc:
        raise OfflineError(f"{pinned} could not be fetched ({one_line(exc, upto='line')}); {fix}.") from None


@contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    # huggingface_hub logs every retry as a warning; effnet reports the outcome in one line instead.
    import logging

    logger = logging.getLogger("huggingface_hub")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)
