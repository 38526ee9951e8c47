"""Typed errors a user can cause.

Every error here carries one sentence a user can act on. The command line
prints ``str(error)`` on one line of stderr and exits non-zero; library users
can catch :class:`EffnetError` (or the more specific classes) instead.
"""

from __future__ import annotations


class EffnetError(Exception):
    """Base class for every error the user can cause and fix."""


class ConfigError(EffnetError, ValueError):
    """A configuration value is wrong (bad type, range, or inconsistent lists)."""


class WeightsError(EffnetError):
    """A checkpoint is missing, unreadable, truncated, or does not fit the model."""


class UnsafeCheckpointError(WeightsError):
    """A pickle checkpoint would need arbitrary code to load, so it is refused."""


class OfflineError(WeightsError):
    """Weights are not in the local cache and the network may not be used."""


class InputError(EffnetError):
    """An input path, image or option given by the user cannot be used."""


class DecodeError(InputError):
    """One image could not be decoded; the run goes on with the others."""
