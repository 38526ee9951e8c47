"""Facts about the machine and the installation this process runs on, read, never changed.

The bottom floor (standard library only, nothing imported from effnet), so that
data/, runtime/, scale/ and the CLI ask the same question the same way: how many
cores this process may use, which CPU it runs on, which optional packages are
installed and at which version, and effnet's own version. What changes the
process (the allocator settings) lives apart, in :mod:`effnet_cli.malloc`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["EFFNET_VERSION", "cpu_name", "installed", "package_version", "usable_cores"]

# effnet's version: the package root's ``__version__``, kept here so that lower floors can read it
# without importing the package root (pyproject.toml states the same number for the wheel).
EFFNET_VERSION = "0.1.0"


def usable_cores() -> int:
    """CPU cores this process may run on (taskset and container CPU sets respected); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def installed(name: str) -> bool:
    """True when the package ``name`` can be imported (found without importing it)."""
    return importlib.util.find_spec(name) is not None


def package_version(name: str, missing: str = "-") -> str:
    """The installed distribution ``name``'s version, or ``missing`` when it is not installed."""
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:  # noqa: BLE001 - any failure to read the metadata means: not installed here
        return missing
