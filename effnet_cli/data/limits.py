"""Time limits on decoding: each input's read + decode + preprocess must end within ``--decode-timeout``.

    inputs -> decode (workers) -> preprocess -> batch -> model -> results -> writers
              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
              bounded in time by this module

Two mechanisms, because one alone cannot cover every hang:

* **In the decoding process** (:func:`call_with_time_limit`), a one-shot ``ITIMER_REAL`` timer whose
  SIGALRM handler raises :class:`TimeLimitExceeded`. A read blocked in the kernel returns EINTR,
  and since PEP 475 Python then runs the handler, whose exception ends the read; Pillow decodes
  in a Python loop over chunks of at most 64 KiB, and numpy between whole-array operations, so
  the handler runs within milliseconds of the limit. Only the main thread of a process can
  receive it: elsewhere (a library caller's thread) decoding runs without this limit.
* **In the parent** (:class:`Watch`), for a C call that never returns to Python (a read in the
  kernel's uninterruptible sleep on a stale network mount, a decoder stuck in a loop): each
  worker process writes the position it is on and when it began into a shared board; the
  parent kills a worker whose input has run past :func:`backstop_after` seconds, records that
  input's time-limit reason in the job, and its loader's crash recovery redoes the rest.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from effnet_cli.errors import InputError

__all__ = ["DEFAULT_DECODE_TIMEOUT", "TimeLimitExceeded", "Watch", "backstop_after", "call_with_time_limit",
           "check_input_limits", "check_timeout", "input_began", "input_ended", "option_time_limit", "timeout_reason"]

# Seconds one input may take to read, decode and preprocess. No real photo comes near it. The slowest
# we measured is an image at the --max-pixels ceiling (89 megapixels, 9400×9500) on this project's
# shared 2-core machine: a PNG or 16-bit PNG decodes in 3-4 s, a JPEG in 2 s; preprocessed by PyTorch
# in under 4 s, by the lean path's numpy pipeline (ONNX Runtime, OpenVINO) in 68 s when it is not a
# JPEG (JPEGs are decoded at reduced size first). 300 s leaves that a 4× margin for a slower or busier
# machine (docs/robustness.md), while a hung network read still ends within minutes, not never.
DEFAULT_DECODE_TIMEOUT = 300.0

# What the parent adds to the limit before it kills a worker that the in-process timer did not stop:
# the timer normally ends an input within milliseconds of the limit, so reaching this means a C call
# is not returning to Python at all.
_BACKSTOP_FACTOR = 2.0
_BACKSTOP_GRACE_S = 5.0

# Seconds until the timer looks again when it expired during an import.
_IMPORT_RETRY_S = 0.05

T = TypeVar("T")


class TimeLimitExceeded(BaseException):
    """Raised inside a decode when its time limit passes.

    A BaseException, like KeyboardInterrupt, because it interrupts code at an arbitrary point:
    the ``except Exception`` clauses in Pillow and in our decoder, which turn a library's error
    into "corrupt PNG", must let it through.
    """


def timeout_reason(seconds: float) -> str:
    """The error reason of an input that exceeded the limit, naming the option that sets it."""
    return f"decoding took longer than the --decode-timeout of {seconds:g} s"


def check_timeout(seconds: float | None) -> float | None:
    """The limit as the loaders take it: None for no limit (``None`` or 0); a negative one is refused."""
    if seconds is None:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        raise InputError(f"--decode-timeout must be 0 (no limit) or a positive number of seconds, got {seconds:g}.")
    return float(seconds) if seconds > 0 else None


def option_time_limit(given: float | None) -> float | None:
    """``--decode-timeout`` as a command got it (None: not given) -> the limit: the default, or None for 0."""
    return check_timeout(DEFAULT_DECODE_TIMEOUT if given is None else given)


def check_input_limits(max_pixels: int | None, decode_timeout: float | None) -> None:
    """``--max-pixels`` and ``--decode-timeout`` as a command got them: a usage error for a value no run can use."""
    if max_pixels is not None and max_pixels < 1:
        raise InputError(f"--max-pixels must be positive, got {max_pixels}.")
    option_time_limit(decode_timeout)


def backstop_after(seconds: float) -> float:
    """Seconds after which the parent kills a worker still on one input (limit ``seconds``)."""
    return _BACKSTOP_FACTOR * seconds + _BACKSTOP_GRACE_S


class _Timer:
    """The armed state of one :func:`call_with_time_limit`, which its SIGALRM handler reads."""

    armed = False

    def expire(self, _signum: int, frame: Any) -> None:
        # A signal that was already on its way when the timer was disarmed must not raise later.
        if not self.armed:
            return
        # Never inside an import (a transform's first use may import a library): a module cut short
        # halfway, a C extension's above all, stays broken for the rest of the process. Ask again
        # shortly; an import that never ends is the parent's backstop's to stop.
        while frame is not None:
            if frame.f_code.co_filename.startswith("<frozen importlib"):
                signal.setitimer(signal.ITIMER_REAL, _IMPORT_RETRY_S)
                return
            frame = frame.f_back
        self.armed = False
        raise TimeLimitExceeded


def call_with_time_limit(seconds: float | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, interrupted by :class:`TimeLimitExceeded` when it runs past ``seconds``.

    No limit when ``seconds`` is None, outside the main thread, or when SIGALRM has a handler that
    Python did not install (it cannot be put back). Any previous SIGALRM handler is restored, and a
    timer that was running is re-armed with what remains of it.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        return fn(*args)
    previous = signal.getsignal(signal.SIGALRM)
    if previous is None:
        return fn(*args)
    timer = _Timer()
    before_delay, before_interval = signal.getitimer(signal.ITIMER_REAL)
    began = time.monotonic()
    signal.signal(signal.SIGALRM, timer.expire)
    try:
        timer.armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            timer.armed = False
    finally:
        signal.signal(signal.SIGALRM, previous)
        if before_delay > 0:
            left = before_delay - (time.monotonic() - began)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), before_interval)


class Watch:
    """A board in shared memory where each worker process says which input it is on, since when.

    Slot ``i`` holds (position or -1, CLOCK_MONOTONIC start, worker pid); CLOCK_MONOTONIC is one
    clock for every process of a machine. Made by the parent from a multiprocessing context and
    handed to each worker when it starts (a shared array cannot be pickled later); a worker calls
    :meth:`attach` once, then :func:`input_began`/:func:`input_ended` mark each input.
    """

    def __init__(self, ctx: Any, slots: int) -> None:
        self.slots = slots
        self._board = ctx.RawArray("d", [-1.0, 0.0, 0.0] * slots)

    def attach(self, slot: int) -> None:
        """Make this process the worker of ``slot``: :func:`input_began` and :func:`input_ended` write there."""
        global _ATTACHED
        self._board[3 * slot: 3 * slot + 3] = [-1.0, 0.0, float(os.getpid())]
        _ATTACHED = (self, slot)

    def _mark(self, slot: int, position: int) -> None:
        base = 3 * slot
        self._board[base + 1] = time.monotonic()
        self._board[base] = float(position)  # written last: the parent never sees a position with an old start

    def clear(self, slot: int) -> None:
        """Forget what ``slot`` was on (its worker is gone or was replaced)."""
        self._board[3 * slot] = -1.0

    def overdue(self, after: float, slots: range | list[int] | None = None) -> list[tuple[int, int, int]]:
        """(slot, position, pid) of each worker that has been on one input for more than ``after`` seconds."""
        now = time.monotonic()
        late = []
        for slot in range(self.slots) if slots is None else slots:
            position, began, pid = self._board[3 * slot: 3 * slot + 3]
            if position >= 0 and now - began > after:
                late.append((slot, int(position), int(pid)))
        return late


# (watch, slot) of this process when it is a watched worker; None in the parent and in-process decoding.
_ATTACHED: tuple[Watch, int] | None = None


def input_began(position: int) -> None:
    """Say on the board (if this process is a watched worker) that ``position`` starts now."""
    if _ATTACHED is not None:
        watch, slot = _ATTACHED
        watch._mark(slot, position)


def input_ended() -> None:
    """Say on the board that this process finished its input."""
    if _ATTACHED is not None:
        watch, slot = _ATTACHED
        watch.clear(slot)
