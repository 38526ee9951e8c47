"""One batch of inputs: decode and transform each position, then stack what succeeded.

Shared by the two loaders — ``loader.py`` (torch tensors, torch's DataLoader workers) and
``pool.py`` (numpy arrays, standard-library workers) — so that both give every input the same
outcome and the same reason in words. The array library is a parameter (:class:`Stacking`); this
module imports neither torch nor numpy's heavy paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import inspect
import pickle
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from effnet_cli.data.decode import _short, open_image
from effnet_cli.data.limits import (TimeLimitExceeded, Watch, backstop_after, call_with_time_limit, check_timeout,
                                    input_began, input_ended, timeout_reason)
from effnet_cli.data.pathlist import PathList
from effnet_cli.errors import DecodeError, InputError

__all__ = ["CRASH_REASON", "Batch", "BatchJob", "Outcome", "Stacking", "assemble", "checked_job", "load_positions", "recover", "run_isolated"]

# Reason recorded for an input whose decoder took its process down with it.
CRASH_REASON = "decoder process crashed"


@dataclass
class Batch:
    """One batch of decoded inputs, covering the positions ``span`` of the input list.

    Every position in ``span`` is in exactly one of ``indices`` (decoded; its
    pixels are row ``indices.index(pos)`` of ``pixel_values``) or ``errors``.
    ``pixel_values`` is N×3×H×W with N = ``len(indices)``; when every item
    failed it is an empty tensor and must not be fed to a model.
    """

    indices: list[int]
    pixel_values: Any  # torch.Tensor from loader.py, numpy array from pool.py
    errors: list[tuple[int, str]] = field(default_factory=list)
    span: range = range(0)

    def outcomes(self) -> Iterator[tuple[int, int | None, str | None]]:
        """(position, row in pixel_values or None, error or None), in input order.

        This is the order writers emit records in, so output rows never get
        out of step with the inputs.
        """
        rows = {pos: row for row, pos in enumerate(self.indices)}
        reasons = dict(self.errors)
        for pos in self.span:
            yield pos, rows.get(pos), reasons.get(pos)


# (position, C×H×W tensor/array or None, error or None) for one input
Outcome = tuple[int, Any, "str | None"]


@dataclass(frozen=True)
class Stacking:
    """How one array library checks a transform's output and stacks a batch (module-level functions,
    so a job holding it pickles into worker processes)."""

    what: str  # "tensor" or "array", for the reason a wrong transform output gets
    shape_of: Callable[[Any], "tuple[int, ...] | None"]  # the C×H×W shape, or None when it is not one
    stack: Callable[[list[Any]], Any]  # N×3×H×W from the rows, or the empty batch for no rows


def load_positions(paths: Sequence[str], positions: Iterable[int], open_kwargs: dict[str, Any],
                   transform: Callable[[Image.Image], Any], stacking: Stacking, *, timeout: float | None = None,
                   failed: dict[int, str] | None = None) -> list[Outcome]:
    """Decode and transform each position; every failure becomes a reason, and costs that input only.

    Each input's read, decode and transform together get ``timeout`` seconds (None: no limit; see
    :mod:`effnet_cli.data.limits`). A position in ``failed`` is not touched again: it already hung
    a process, and gets that reason.
    """
    outcomes: list[Outcome] = []
    for pos in positions:
        known = failed.get(pos) if failed else None
        if known is not None:
            outcomes.append((pos, None, known))
            continue
        input_began(pos)
        try:
            outcomes.append(call_with_time_limit(timeout, _load_one, pos, paths[pos], open_kwargs, transform, stacking))
        except TimeLimitExceeded:
            outcomes.append((pos, None, timeout_reason(timeout or 0)))
        finally:
            input_ended()
    return outcomes


def _load_one(pos: int, path: str, open_kwargs: dict[str, Any], transform: Callable[[Image.Image], Any],
              stacking: Stacking) -> Outcome:
    """One input's outcome: its C×H×W pixels, or the reason it has none."""
    try:
        image = open_image(path, **open_kwargs)
    except DecodeError as exc:
        return (pos, None, str(exc))
    except MemoryError:
        return (pos, None, "out of memory while decoding")
    except Exception as exc:  # a bug in decoding must still cost one file only
        return (pos, None, f"cannot decode image ({type(exc).__name__}: {_short(exc)})")
    try:
        pixels = transform(image)
        shape = stacking.shape_of(pixels)
        if shape is None or len(shape) != 3:
            got = shape if shape is not None else type(pixels).__name__
            raise TypeError(f"expected a C×H×W {stacking.what}, got {got}")
    except MemoryError:
        return (pos, None, "out of memory while preprocessing")
    except Exception as exc:
        return (pos, None, f"preprocessing failed ({type(exc).__name__}: {_short(exc)})")
    return (pos, pixels, None)


def assemble(span: range, outcomes: Iterable[Outcome], stacking: Stacking) -> Batch:
    """One batch from its outcomes: the successes stacked N×3×H×W; failures and odd shapes become errors."""
    indices: list[int] = []
    rows: list[Any] = []
    errors: list[tuple[int, str]] = []
    shape: tuple[int, ...] | None = None
    for pos, pixels, error in sorted(outcomes, key=lambda o: o[0]):
        if pixels is None:
            errors.append((pos, error or "unknown error"))
            continue
        this = tuple(stacking.shape_of(pixels) or ())
        if shape is None:
            shape = this
        elif this != shape:
            # A transform without a fixed output size: the odd one cannot be stacked, and
            # guessing a resize here would change the numbers.
            errors.append((pos, f"preprocessed to shape {this}, but this batch is {shape}"))
            continue
        indices.append(pos)
        rows.append(pixels)
    return Batch(indices=indices, pixel_values=stacking.stack(rows), errors=errors, span=span)


@dataclass
class BatchJob:
    """Everything a decode worker needs, pickled to it once: the inputs, the transform and the batching.

    Batch ``b`` covers the positions ``span(b)`` from ``start``; ``job[b]`` decodes and stacks it
    (map-style, so torch's DataLoader takes it as a dataset too).
    """

    paths: list[str]
    transform: Callable[[Image.Image], Any]
    batch_size: int
    start: int
    open_kwargs: dict[str, Any]
    stacking: Stacking
    timeout: float | None = None  # seconds each input may take (None: no limit)
    # Positions that hung a worker past the limit, with their reason: never decoded again. Filled in
    # by the parent; a worker started afterwards gets them.
    failed: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        remaining = max(0, len(self.paths) - self.start)
        return -(-remaining // self.batch_size)

    def span(self, b: int) -> range:
        first = self.start + b * self.batch_size
        return range(first, min(first + self.batch_size, len(self.paths)))

    def load(self, positions: Iterable[int]) -> list[Outcome]:
        """Decode and transform each position; every failure becomes a reason."""
        return load_positions(self.paths, positions, self.open_kwargs, self.transform, self.stacking,
                              timeout=self.timeout, failed=self.failed)

    def warm_up(self) -> None:
        """Under a time limit, run the transform once on a tiny image, outside the limit.

        Its first use may import libraries (torchvision: seconds on a busy machine), which is no
        input's fault; a fresh worker would otherwise charge it to its first input.
        """
        if self.timeout is None:
            return
        try:
            self.transform(Image.new("RGB", (8, 8)))
        except Exception:  # the inputs will meet the same error, each with its own record
            pass

    def mark_hung(self, pos: int) -> None:
        """Record that ``pos`` hung a worker past the limit: it gets the time-limit reason, and no second try."""
        self.failed[pos] = timeout_reason(self.timeout or 0)

    def __getitem__(self, b: int) -> Batch:
        span = self.span(b)
        return assemble(span, self.load(span), self.stacking)

    def without_paths(self) -> BatchJob:
        """This job for a worker process that gets each batch's paths with the batch (:meth:`decode`).

        A worker that held the whole list would cost memory in proportion to the input count,
        once per worker, and every worker start would pickle the whole list again.
        """
        return replace(self, paths=[])

    def decode(self, span: range, paths: Sequence[str]) -> Batch:
        """The batch of the positions ``span``, whose paths are ``paths`` (in order)."""
        window = _Window(span.start, paths)
        return assemble(span, load_positions(window, span, self.open_kwargs, self.transform, self.stacking,
                                             timeout=self.timeout, failed=self.failed), self.stacking)


class _Window(Sequence[str]):
    """The paths of one batch, indexed by their positions in the whole input list."""

    def __init__(self, first: int, paths: Sequence[str]) -> None:
        self.first, self.paths = first, paths

    def __len__(self) -> int:
        return self.first + len(self.paths)

    def __getitem__(self, pos: Any) -> Any:
        return self.paths[pos - self.first]


def checked_job(paths: Sequence[str], transform: Callable[[Image.Image], Any], stacking: Stacking, *, batch_size: int,
                workers: int, prefetch: int, start: int, open_kwargs: dict[str, Any] | None,
                decode_timeout: float | None = None) -> BatchJob:
    """The job of a loader call, its arguments checked once, before any worker starts.

    ``decode_timeout`` of None or 0 means no time limit.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    if prefetch < 1:
        raise InputError(f"prefetch must be at least 1, got {prefetch}")
    if not 0 <= start <= len(paths):
        raise InputError(f"start must be between 0 and {len(paths)}, got {start}")
    kwargs = dict(open_kwargs or {})
    inspect.signature(open_image).bind("", **kwargs)  # a misspelt option fails here, not once per image
    kept = paths if isinstance(paths, PathList) else list(paths)  # a compact list stays compact
    return BatchJob(kept, transform, batch_size, start, kwargs, stacking, check_timeout(decode_timeout))


def recover(span: range, run_isolated: Callable[[list[int]], "list[Outcome] | None"], stacking: Stacking) -> Batch:
    """Redo a batch whose worker died: whole in a fresh process, else each input alone, so that an
    input that takes its process down costs its own record (CRASH_REASON) and nobody else's."""
    outcomes = run_isolated(list(span))
    if outcomes is None:
        outcomes = []
        for pos in span:
            single = run_isolated([pos])
            outcomes.extend(single if single is not None else [(pos, None, CRASH_REASON)])
    return assemble(span, outcomes, stacking)


def _isolated_main(init: Callable[[], None], job: BatchJob, positions: list[int], conn: Any,
                   watch: Watch | None, slot: int) -> None:
    """Body of a single-use process: set it up as a worker, load ``positions``, send the outcomes back."""
    init()
    job.warm_up()
    if watch is not None:
        watch.attach(slot)
    # Plain pickle copies tensor data into the message; torch's shared-memory reducer would hand over
    # file descriptors that vanish with this short-lived process.
    conn.send_bytes(pickle.dumps(job.load(positions), protocol=pickle.HIGHEST_PROTOCOL))
    conn.close()


# Seconds between looks at the board while an isolated process works under a time limit.
_WATCH_POLL_S = 0.25


def run_isolated(ctx: Any, init: Callable[[], None], job: BatchJob, positions: list[int],
                 watch: Watch | None = None, slot: int = 0) -> list[Outcome] | None:
    """Load ``positions`` in a fresh process of the multiprocessing context ``ctx``; None if it died.

    ``init`` (picklable) sets the process up as the loader sets up its workers. With a time limit
    and a ``watch`` (whose ``slot`` is this process's), an input that holds the process past the
    backstop kills it; that input gets the time-limit reason and the rest are loaded again in a new
    process. The process is always reaped before this returns.
    """
    while True:
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_isolated_main, args=(init, job, positions, sender, watch, slot), daemon=True)
        proc.start()
        sender.close()  # so recv sees EOF when the child dies without answering
        hung = None
        try:
            if watch is not None and job.timeout is not None:
                hung = _await_answer(proc, receiver, watch, slot, backstop_after(job.timeout))
            payload = None if hung is not None else receiver.recv_bytes()
        except (EOFError, OSError):
            payload = None
        finally:
            receiver.close()
            proc.join()
        if hung is None:
            return None if payload is None else pickle.loads(payload)
        job.mark_hung(hung)


def _await_answer(proc: Any, receiver: Any, watch: Watch, slot: int, after: float) -> int | None:
    """Wait until ``proc`` answers or dies (None), or kill it when one input holds it past ``after`` seconds
    (that input's position)."""
    while not receiver.poll(_WATCH_POLL_S):
        for _slot, pos, _pid in watch.overdue(after, [slot]):
            proc.kill()
            watch.clear(slot)
            return pos
    return None
