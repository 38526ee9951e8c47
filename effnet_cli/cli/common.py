"""Steps every inference command shares: find the inputs, load the model."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effnet_cli.cli.options import DEFAULT_VARIANT, DType, Variant
from effnet_cli.cli.render import info_line
from effnet_cli.errors import InputError

if TYPE_CHECKING:
    from effnet_cli.runtime.engine import Engine
    from effnet_cli.runtime.lean import LeanEngine


def probe_hub_early(variant: Variant | None, model: str | None) -> None:
    """For a hub model, start checking that the hub answers now, while torch and the inputs load."""
    name = model if model is not None else (variant.value if variant is not None else DEFAULT_VARIANT)
    if name.lower() != DEFAULT_VARIANT and not Path(name).expanduser().exists():
        from effnet_cli.weights.probe import start_probe

        start_probe()


def require_inputs(inputs: list[str]) -> None:
    """Refuse a command line whose every input is a path that does not exist, before anything loads.

    A missing file among others still gets its own error record; when nothing named exists there
    is nothing to run, which the arguments alone decide.
    """
    import glob
    import os

    named = [arg for arg in inputs if arg != "-"]
    if len(named) < len(inputs) or not named:
        return
    if any(os.path.lexists(arg) or glob.has_magic(arg) for arg in named):
        return
    more = f" (and {len(named) - 1} more missing)" if len(named) > 1 else ""
    raise InputError(f"{named[0]}: no such file or directory{more}.")


def gather_inputs(inputs: list[str], null: bool, *, compact: bool = False) -> Sequence[str]:
    """The ordered, de-duplicated image list the arguments (and stdin, for ``-``) name; ``compact`` keeps it
    as a :class:`~effnet_cli.data.pathlist.PathList` (one buffer, not a ``str`` per path), for the runs that
    hold the whole list to the end (sharded outputs)."""
    from effnet_cli.data.inputs import iter_inputs
    from effnet_cli.data.pathlist import PathList

    reads_stdin = _check_stdin(inputs)
    found = iter_inputs(inputs, null_separated=null, stdin=sys.stdin.buffer if reads_stdin else None)
    return PathList.from_iterable(found) if compact else list(found)


# Inputs a streaming run (classify to stdout or -o) takes at a time: its memory is bounded by this,
# not by the length of the list; large enough that a fresh set of decode workers per chunk costs little.
STREAM_CHUNK = 16384
# Seconds a pipeline on stdin may pause before the paths already read are run without waiting for more.
STREAM_PAUSE_S = 0.2


class InputStream:
    """The inputs of a streaming run, in chunks (:class:`effnet_cli.data.chunks.Chunks`), the first one
    read already: it says whether the list has ended and so how long it is."""

    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks
        self.first: list[str] = next(chunks, [])  # "no input images" is raised here, as gather_inputs does

    def __iter__(self) -> Iterator[list[str]]:
        first, self.first = self.first, []
        if first:
            yield first
        yield from self.chunks

    @property
    def total(self) -> int | None:
        """The number of inputs, once the list has been read to its end; None before."""
        return self.chunks.taken if self.chunks.ended else None


def stream_inputs(inputs: list[str], null: bool, partition: Any = None) -> InputStream:
    """The images of :func:`gather_inputs` (only ``partition``'s, when given), read as the run goes.

    Stdin is read ahead in a thread and a chunk goes to the model when stdin pauses, so a pipeline's
    first results come before it ends; nothing holds the whole list.
    """
    import itertools

    from effnet_cli.data.inputs import iter_inputs
    from effnet_cli.data.chunks import Chunks

    reads_stdin = _check_stdin(inputs)
    source: Iterator[str] = iter_inputs(inputs, null_separated=null, stdin=_raw_stdin() if reads_stdin else None)
    if partition is not None and partition.count > 1:
        source = itertools.islice(source, partition.index, None, partition.count)
    return InputStream(Chunks(source, STREAM_CHUNK, pause_s=STREAM_PAUSE_S if reads_stdin else None))


def _raw_stdin() -> Any:
    """Stdin for the reading thread, unbuffered: straight reads of file descriptor 0.

    Not ``sys.stdin.buffer``: a thread blocked in its read holds its lock, and a decode worker
    forked meanwhile (multiprocessing closes stdin in a child) or the interpreter's exit would
    wait for that lock for ever.
    """
    try:
        return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    except (AttributeError, OSError, ValueError):  # no descriptor (an in-process test's stdin)
        return sys.stdin.buffer


def _check_stdin(inputs: list[str]) -> bool:
    """Whether the inputs read stdin; refused when stdin is a terminal (nothing would ever come)."""
    if "-" in inputs and sys.stdin.isatty():
        raise InputError("'-' reads paths from stdin, but stdin is a terminal; pipe paths in (e.g. find . -name '*.jpg' | effnet ...).")
    return "-" in inputs


def exact_decoding(exact_decode: bool | None, default: bool, full_decode: bool = False) -> bool:
    """Whether to decode JPEGs exactly: --exact-decode/--fast-decode, else the old --full-decode, else ``default``."""
    if full_decode:
        from effnet_cli.cli.render import info_line

        info_line("--full-decode is deprecated; use --exact-decode")
        if exact_decode is False:
            raise InputError("--full-decode and --fast-decode contradict each other; give one.")
        return True
    return default if exact_decode is None else exact_decode


@dataclass(frozen=True)
class EngineOptions:
    """The model options of an inference command, checked once: what :func:`load_engine` loads."""

    variant: Variant | None  # --variant
    model: str | None  # --model: a hub id or a local directory
    revision: str | None  # --revision
    device: str  # --device
    dtype: DType  # --dtype
    compile: bool  # --compile
    exact_decode: bool  # JPEGs decoded at full size (False: the fast reduced decode)
    max_pixels: int | None  # --max-pixels (None: the default limit)
    decode_timeout: float | None  # --decode-timeout, seconds per input (None: the default; 0: no limit)
    backend: str  # --backend: auto, torch, onnxruntime or openvino
    batch_size: int  # --batch-size; "auto" measures the backends at it
    quiet: bool  # --quiet: no download bars, no notes

    def __post_init__(self) -> None:
        if self.variant is not None and self.model is not None:
            raise InputError("Give either --variant or --model, not both.")
        from effnet_cli.data.limits import check_input_limits

        check_input_limits(self.max_pixels, self.decode_timeout)  # before anything loads

    @property
    def pixel_limit(self) -> int:
        """--max-pixels as the decoder takes it: the default when not given."""
        from effnet_cli.data.decode import option_pixel_limit

        return option_pixel_limit(self.max_pixels)

    @property
    def time_limit(self) -> float | None:
        """--decode-timeout as the loaders take it: the default when not given, None for no limit (0)."""
        from effnet_cli.data.limits import option_time_limit

        return option_time_limit(self.decode_timeout)

    @classmethod
    def from_args(cls, args: Mapping[str, Any], **given: Any) -> EngineOptions:
        """The options from a command's parameters (by field name), with ``given`` taking precedence."""
        return cls(**{f.name: given[f.name] if f.name in given else args[f.name] for f in fields(cls)})

    @property
    def name(self) -> str:
        """The model to load: --model, else --variant, else the bundled default."""
        return self.model if self.model is not None else (
            self.variant.value if self.variant is not None else DEFAULT_VARIANT)


def load_engine(options: EngineOptions, *, device: str | None = None, backend: str | None = None,
                inputs: int | None = None, lean: bool = True) -> Engine | LeanEngine:
    """Load the weights named by --variant / --model and prepare them for inference.

    ``device`` and ``backend`` override the options' own (the parent of device workers loads its
    copy on the CPU). With ``--backend auto``, a run of ``inputs`` images (None: unknown) exports and
    measures the backends only when it is long enough to gain from it
    (:data:`effnet_cli.runtime.backends.AUTO_MEASURE_MIN_IMAGES`); shorter runs use a remembered
    choice, or PyTorch. ``lean=False`` always gives the PyTorch :class:`Engine` (which may still run
    the model in a runtime), for callers that need its torch preprocessing (Ray's decode tasks).
    """
    from effnet_cli.runtime.backends import AUTO_MEASURE_MIN_IMAGES

    measure = inputs is None or inputs >= AUTO_MEASURE_MIN_IMAGES
    found = _lean_engine(options, device=device, backend=backend, measure=measure) if lean else None
    if found is not None:
        return found
    from effnet_cli.runtime.engine import Engine

    if options.quiet:
        # Downloads show huggingface_hub's progress bars on stderr; --quiet means none.
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if options.compile and not options.quiet:
        # torch.compile works on the first batch, tens of seconds during which nothing else would move.
        info_line("compiling the model with torch.compile; the first batch takes a while…")
    engine = Engine.from_pretrained(
        options.name, revision=options.revision, device=options.device if device is None else device,
        dtype=options.dtype.value, compile=options.compile, draft=not options.exact_decode,
        max_pixels=options.pixel_limit,
        decode_timeout=options.time_limit,
        backend=options.backend if backend is None else backend, batch_size=options.batch_size,
        measure=measure, announce=None if options.quiet else _announce_measurement,
        first_export=(lambda: None) if options.quiet else _announce_first_export)
    source = engine.source or {}
    if source.get("source") == "hub" and not options.quiet:
        # The exact commit, so a run can be reproduced with --revision.
        info_line(f"using {source['repo_id']} at revision {source['revision']}")
    return engine


def _lean_engine(options: EngineOptions, *, device: str | None, backend: str | None,
                 measure: bool) -> LeanEngine | None:
    """The torch-free engine, when --model is an export directory, or when ``auto``, ``onnxruntime`` or
    ``openvino`` finds a cached export of the model.

    The lean path runs only where the PyTorch path has nothing to add: on the CPU, in
    float32, without --compile; the model's files must resolve without a download, and a cached
    export of them must be recorded in the index (:mod:`effnet_cli.runtime.index`), and for a run that
    ``measure``s (long enough to gain from the fastest backend), auto's measured choice at its batch size.
    """
    from effnet_cli.runtime.lean import LeanEngine, export_format, lean_for_model

    backend = options.backend if backend is None else backend
    device = options.device if device is None else device
    kwargs: dict[str, Any] = {"batch_size": options.batch_size, "dtype": options.dtype.value,
                              "draft": not options.exact_decode, "device": device,
                              "max_pixels": options.pixel_limit,
                              "decode_timeout": options.time_limit}
    if options.model is not None and export_format(options.model) is not None:
        if options.compile:
            raise InputError(f"{options.model} is an exported model; --compile needs the PyTorch weights.")
        return LeanEngine(options.model, backend=backend, **kwargs)
    # float16 on the CPU computes in float32 and only stores float16 rows: the lean engine does the same.
    if (backend == "torch" or options.compile or options.dtype.value == "bfloat16" or device not in ("auto", "cpu")
            or (device == "auto" and _has_gpu())):
        return None
    from effnet_cli.errors import EffnetError
    from effnet_cli.weights.resolve import resolve_files

    try:
        files, source = resolve_files(options.name, revision=options.revision, local_files_only=True)
        found = lean_for_model(files, batch_size=options.batch_size, backend=backend, measured_only=measure)
        return None if found is None else LeanEngine(found[1], backend=found[0], source=source, **kwargs)
    except EffnetError:  # not cached locally, or an export this machine cannot run: the PyTorch path decides
        return None


def _has_gpu() -> bool:
    """Whether an NVIDIA driver is loaded (--device auto would pick CUDA), asked without importing torch."""
    return Path("/proc/driver/nvidia/version").exists()


def _announce_first_export() -> None:
    info_line("exporting the model for ONNX Runtime once (about 8 s for b0); later runs start without PyTorch")


def _announce_measurement(rates: dict[str, float] | None) -> None:
    if rates is None:
        info_line("choosing the fastest backend for this model and batch size on this machine "
                  "(once: it exports the model and times each backend; about 10 s for b0, a minute or two for b7)")
        return
    best = max(rates, key=rates.__getitem__)
    others = ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items() if name != best)
    info_line(f"{best} was fastest ({rates[best]:.0f} images/s; {others}); later runs use it "
              "(--backend chooses another)")


def resolve_workers(workers: int | None) -> int:
    """--workers, or the default decode pool size."""
    from effnet_cli.data import default_workers

    return default_workers() if workers is None else workers
