"""The settings an output was made with, and the check that refuses to mix outputs of different settings.

Every partial and every completion marker stores the run's settings (model
identity and weights hash or hub revision, dtype, features, pool, normalize,
decode mode, the preprocessing, the metadata format ...). Continuing a run,
or adding a partition to a directory, with any setting changed is refused
with one sentence naming every setting that differs: rows made with two
dtypes or two models must never end up in one array.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError

__all__ = ["SettingsMismatchError", "settings_differences", "check_settings", "file_sha256"]


class SettingsMismatchError(InputError):
    """An output was made with other settings than this run's."""


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def settings_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Names of the settings whose values differ (a setting only one side has counts as differing)."""
    keys = sorted(set(recorded) | set(current))
    return [k for k in keys if _canonical(recorded.get(k)) != _canonical(current.get(k))]


def _short(value: Any) -> str:
    text = _canonical(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_settings(recorded: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raise :class:`SettingsMismatchError` when ``where`` was made with other settings than ``current``."""
    differ = settings_differences(recorded, current)
    if differ:
        shown = "; ".join(f"{k}={_short(recorded.get(k))} there, {_short(current.get(k))} now" for k in differ)
        raise SettingsMismatchError(f"{where} was made with other settings ({shown}); rerun with the same "
                                    f"settings, or write to another output.")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (a local checkpoint's identity), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
