"""glibc malloc tuning, process-wide: what the inference process and the decode workers each need.

glibc serves allocations above its mmap threshold with a fresh ``mmap`` and
returns them on free. By default that threshold *adapts*: each freed mmapped
block raises it to that block's size (up to 32 MiB), so later blocks of that
size come from the heap instead, and the heap only shrinks from its top. The
two kinds of process here want opposite fixed settings:

* the model process reuses the same few large activation buffers every batch,
  so it keeps freed memory (:func:`keep_freed_memory`, which
  :func:`effnet_cli.runtime.fused` calls on the CPU) instead of
  page-faulting it in again, zero-filled, on each forward pass;
* a decode worker allocates a decoded image and a preprocessed tensor per
  image and a batch tensor per batch, between long-lived small objects; with
  the adaptive threshold the batch tensors land in the heap and fragment it,
  and a worker grew by about one batch tensor per batch (docs/benchmarks.md).
  A fixed 1 MiB threshold (:func:`return_freed_memory`) hands every batch
  tensor back to the system when it is freed, while the per-image buffers
  (below 1 MiB at the sizes draft decoding produces) are reused from the heap
  instead of being page-faulted in again for every image: with glibc's
  initial 128 KiB, decoding ran ~1.4× slower on this VM.

Both return False (and change nothing) where the C library is not glibc.

A bottom-floor module (standard library only), beside :mod:`effnet_cli.host`: host
reads facts about the machine, this module changes the process, so the two stay apart.
"""

from __future__ import annotations

import ctypes
import functools

__all__ = ["keep_freed_memory", "release_free_memory", "return_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
# Bytes below which the model process keeps freed blocks for reuse instead of returning them.
_KEEP_FREED_BYTES = 1 << 30
# The decode workers' fixed mmap threshold (setting one explicitly is what turns the adaptation
# off) and trim threshold: batch tensors above it, per-image buffers below it.
_WORKER_MMAP_BYTES = 1 << 20
_WORKER_TRIM_BYTES = 8 << 20


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    try:
        # The symbols already loaded into this process (the C library among them), not
        # ctypes.util.find_library("c"): that runs `ldconfig -p` in a forked child, which costs every
        # decode worker's start tens of milliseconds and briefly a copy of the worker's memory.
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all([bool(mallopt(param, value)) for param, value in settings])


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse freed activation buffers instead of returning them to the OS each batch.

    With the mmap and trim thresholds at 1 GiB, the second batch reuses the
    first one's memory instead of page-faulting its large activations in again,
    zero-filled by the kernel page by page (b0, batch 16: about 1.2-1.5× faster
    on 2 cores). The price is memory: freed blocks stay in the process, and
    serving large tensors from the heap fragments it, so the peak grows by a
    few percent for b0 and up to ~1.9× for b7 at batch 16
    (docs/benchmarks.md). Process-wide: :func:`effnet_cli.runtime.fused` calls it
    for models on the CPU unless told not to; cached, so repeated calls are free.
    """
    return _mallopt(((_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES), (_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)))


@functools.lru_cache(maxsize=1)
def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 1 MiB (trim at 8 MiB): large freed blocks go back to the system.

    What the decode workers run at start-up (undoing :func:`keep_freed_memory`
    if they were forked from a process that set it): their memory then stays
    flat however many images they decode.
    """
    return _mallopt(((_M_MMAP_THRESHOLD, _WORKER_MMAP_BYTES), (_M_TRIM_THRESHOLD, _WORKER_TRIM_BYTES)))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim(0)``), once.

    For the ends of long phases that freed much more than the steady state
    holds, such as publishing a shard: without it the freed memory stays in the
    process, and the next phase's allocations land beside it instead of in it,
    so a long run's peak grew with the number of shards. False where the C
    library is not glibc.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
