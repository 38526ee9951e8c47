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


class ConfigFileError(ConfigError, OSError):
    """A config file (config.json, preprocessor_config.json) is missing or is not readable JSON.

    Also an ``OSError``: transformers raises that when a config cannot be found or read, and
    code written for it (``except OSError:`` around ``from_pretrained``) must catch this too.
    """


class WeightsError(EffnetError):
    """A checkpoint is missing, unreadable, truncated, or does not fit the model."""


class LoadError(WeightsError, OSError):
    """Weights cannot be found or read: no such directory, variant, hub repository, revision or file,
    or a file that is not a readable checkpoint.

    Also an ``OSError``, which is what transformers raises for these, so ``except OSError:``
    (``except EnvironmentError:``) written around its ``from_pretrained`` catches effnet's too.
    A checkpoint that is readable but does not fit the model is a plain :class:`WeightsError`.
    """


class UnsafeCheckpointError(LoadError):
    """A pickle checkpoint would need arbitrary code to load, so it is refused."""


class OfflineError(LoadError):
    """Weights are not in the local cache and the network may not be used."""


class InputError(EffnetError):
    """An input path, image or option given by the user cannot be used."""


class DecodeError(InputError):
    """One image could not be decoded; the run goes on with the others."""


class WriteError(EffnetError, OSError):
    """An output could not be written: a full disk, a quota, a read-only file system, no permission, an I/O error.

    The message names the output (its final name, not a temporary's) and the cause, on one line;
    ``errno`` is the failed call's. Also an ``OSError``, so library code that catches those around
    ``save_pretrained`` catches this too. Nothing partial is left under the output's final name.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code

    def __str__(self) -> str:
        return str(self.args[0])


class UnwritableOutputError(WriteError, InputError):
    """An output's directory cannot be written, found before any work began (exit status 2)."""


class EffnetWarning(UserWarning):
    """Something the user should know that does not stop the run (the command line shows it on one line)."""


def one_line(exc: BaseException, *, upto: str | None = None, limit: int | None = None) -> str:
    """A library's exception message on one line, to quote inside one of effnet's sentences.

    Whitespace runs (newlines included) become single spaces. ``upto="line"`` keeps the
    first line only, ``upto="sentence"`` the first sentence, both without the final
    period (the quoting sentence has its own). ``limit`` cuts longer text with "…".
    An empty message gives the exception's type name.
    """
    text = str(exc).strip()
    if upto == "line":
        text = text.splitlines()[0] if text else ""
    text = " ".join(text.split())
    if upto == "sentence":
        end = text.find(". ")
        text = text[:end] if end > 0 else text
    if upto is not None:
        text = text.rstrip(".")
    text = text or type(exc).__name__
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
