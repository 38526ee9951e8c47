"""Ctrl-C at safe points: hold SIGINT while something must not be cut in two.

A KeyboardInterrupt can surface between any two bytecodes, including inside ``stream.write``
after the bytes went out and before the caller counted them; a JSON array then gets closed
as if nothing had been written. Code that writes records holds interrupts for the length of
one batch's writes, so that records and their count always agree, and the interrupt is raised
right after, at the next safe point.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["interrupts_held"]


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Defer Ctrl-C (SIGINT) to the end of the block, then raise ``KeyboardInterrupt`` if one came.

    Only Python's default SIGINT handler is replaced, and only on the main thread (the only one
    signals reach): an ignored SIGINT or a handler of the caller's own stays as it is.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    arrived: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if arrived:
        raise KeyboardInterrupt
