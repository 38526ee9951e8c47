"""``effnet index``, ``effnet search``, ``effnet dedupe``: an index of a photo library, search by image,
near-duplicate groups. The work is in :mod:`effnet_cli.similar`; this module parses, loads, renders."""

from __future__ import annotations

import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.common import (
    EngineOptions,
    exact_decoding,
    gather_inputs,
    load_engine,
    probe_hub_early,
    require_inputs,
    resolve_workers,
)
from effnet_cli.cli.render import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    error_line,
    info_line,
    progress_bar,
    progress_enabled,
    report_failure,
    shown_text,
    stdout_console,
    utf8_stdout,
)
from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import display_path


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"


class DedupeFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"
    paths = "paths"


class Keep(str, Enum):
    largest = "largest"
    oldest = "oldest"
    first = "first"


IndexDir = Annotated[Optional[Path], typer.Option(
    "--index", metavar="INDEX", show_default=False, help="An index directory written by `effnet index`.")]
FormatOpt = Annotated[Optional[Format], typer.Option(
    "--format", "-f", help="table when stdout is a terminal, else jsonl.", show_default=False)]
FeaturesOpt = Annotated[Optional[str], typer.Option(
    "--features", metavar="layout|head", show_default=False,
    help="What is compared. layout: stage 6's feature map on a 4×4 grid plus a 16×16 thumbnail (PyTorch; "
         "chosen on the near-duplicate benchmark). head: the pooled features `effnet embed --normalize` "
         "writes (any backend). [default: layout]")]
SEARCH_COLUMNS = ("query", "rank", "path", "score", "error", "path_bytes")
DEDUPE_COLUMNS = ("group", "path", "size", "mtime", "keep", "score", "path_bytes")


def _engine_options(args: dict[str, Any], features: str) -> EngineOptions:
    """The model options; ``layout`` features run on PyTorch, so ``--backend auto`` means torch for them."""
    backend = args["backend"].value
    if features == "layout":
        if backend not in ("auto", "torch"):
            raise InputError(f"--features layout runs the PyTorch model; --backend {backend} computes only "
                             f"--features head.")
        backend = "torch"
    return EngineOptions.from_args(args, exact_decode=exact_decoding(args.get("exact_decode"), True),
                                   backend=backend, compile=False, revision=args.get("revision"))


def _index_spec(options: EngineOptions, scale: Any, inputs: int) -> tuple[Any, Any]:
    """The engine and the spec its settings are read from (the same ones ``embed`` records), placed as ``embed``
    places them for ``--devices`` and ``--engine ray``."""
    from effnet_cli.cli import sharded

    return sharded.load(options, scale, inputs)


def _sharded_embedder(output: Path, engine: Any, spec: Any, scale: Any, features: str, settings: dict[str, Any], *,
                      checkpoint: int, batch_size: int, workers: int | None, quiet: bool, show: bool) -> Any:
    """``embed``'s engine for the files an index run embeds: shards of ``checkpoint`` rows in a staging directory
    of the index (resumed by a rerun over the same files), read back for one commit."""
    from dataclasses import replace

    from effnet_cli.cli import sharded
    from effnet_cli.output import make_dir
    from effnet_cli.scale.shards import ShardJob
    from effnet_cli.scale.spec import RunOptions
    from effnet_cli.similar.build import staged_batches
    from effnet_cli.similar.store import remove_staging, staging_dir

    def embed(targets: list[str]) -> Any:
        staging = staging_dir(output, targets)
        remove_staging(output, keep=staging)  # another list's shards: files changed since that run
        if not targets:
            return iter(())
        job = ShardJob(kind="embed", directory=make_dir(staging), paths=targets, total=len(targets),
                       shard_size=checkpoint, settings=settings, resume=True, meta_format="jsonl")
        run_options = RunOptions(batch_size=batch_size, normalize=features == "head", layout=features == "layout")
        sharded.run_summary(job, engine, spec, run_options, replace(scale, output_dir=staging), workers=workers,
                            quiet=quiet, show=show)
        return staged_batches(staging)

    return embed


def index(
    inputs: opt.Inputs,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="INDEX", show_default=False,
                                         help="The index directory: created, or brought up to date.")],
    use_hash: Annotated[bool, typer.Option(
        "--hash", help="Also compare files by SHA-256: a file whose time changed but whose bytes did not is kept.")] = False,
    checkpoint: Annotated[int, typer.Option(
        "--checkpoint", min=1, help="Commit the index every N new images (a killed run keeps them).")] = 1000,
    features: FeaturesOpt = None,
    overwrite: opt.Overwrite = False,
    null: opt.Null = False,
    max_pixels: opt.MaxPixels = None,
    decode_timeout: opt.DecodeTimeout = None,
    variant: opt.VariantOpt = None,
    model: opt.ModelOpt = None,
    revision: opt.Revision = None,
    device: opt.Device = "auto",
    dtype: opt.DTypeOpt = opt.DType.float32,
    batch_size: opt.BatchSize = 16,
    workers: opt.Workers = None,
    exact_decode: opt.ExactDecode = None,
    backend: opt.BackendOpt = opt.BackendKind.auto,
    devices: opt.Devices = None,
    engine_kind: opt.EngineOpt = opt.EngineKind.local,
    ray_address: opt.RayAddress = None,
    ray_actors: opt.RayActors = None,
    quiet: opt.Quiet = False,
    progress: opt.Progress = None,
) -> int:
    """Index images for `effnet search` and `effnet dedupe`; a second run updates the index.

    Examples:

      effnet index photos/ -o photos.index

      find photos -name '*.jpg' -print0 | effnet index - -0 -o photos.index

      effnet index photos/ -o photos.index --devices cuda:0,cuda:1

    Only new or changed files (size and modification time; --hash: and content) are embedded;
    indexed files that no longer exist are dropped; one line says what was done
    (added 10, updated 0, removed 1, kept 4,812). An index made with another model, dtype or
    preprocessing is refused. The index is committed atomically every --checkpoint images: a killed
    run leaves a usable index, and the same command finishes it. With --devices or --engine ray the
    files to embed are written as resumable shards inside the index (as `embed --output-dir` writes
    them; no --output-dir is needed) and committed once all are done.
    Exit status: 0 all indexed, 1 some inputs failed, 2 usage error.
    """
    from effnet_cli.output import make_dir
    from effnet_cli.output.targets import check_dir
    from effnet_cli.similar.store import may_write

    started = time.monotonic()
    require_inputs(inputs)
    if not may_write(output):  # a new directory or an empty one; --overwrite only replaces an index of ours
        check_dir(output, "-o", overwrite=overwrite, own=lambda name: False)
    probe_hub_early(variant, model)
    from effnet_cli.similar.features import DEFAULT_FEATURES, check_features
    from effnet_cli.similar.store import index_lock

    kind = DEFAULT_FEATURES if features is None else features
    check_features(kind)
    options = _engine_options(locals(), kind)
    scale = _index_scale(locals(), output, device, options.backend)
    show = progress_enabled(progress, quiet)
    with index_lock(make_dir(output)):
        return _index_locked(inputs, output, options, kind, scale, null=null, overwrite=overwrite, use_hash=use_hash,
                             checkpoint=checkpoint, workers=workers, quiet=quiet, show=show, started=started)


def _index_scale(args: dict[str, Any], output: Path, device: str, backend: str) -> Any:
    """``--devices`` / ``--engine ray`` and their options, checked as ``embed`` checks them; None: this process."""
    from effnet_cli.cli import sharded

    scale = sharded.ScaleOptions.from_args({**args, "output_dir": output})
    if scale.devices is None and scale.engine_kind is opt.EngineKind.local:
        if scale.ray_address is not None or scale.ray_actors is not None:
            raise InputError("--ray-address and --ray-actors only apply with --engine ray.")
        return None
    sharded.check_options(scale, device=device, backend=backend)
    return scale


def _index_locked(inputs: list[str], output: Path, options: EngineOptions, features: str, scale: Any, *, null: bool,
                  overwrite: bool, use_hash: bool, checkpoint: int, workers: int | None, quiet: bool, show: bool,
                  started: float) -> int:
    from effnet_cli.cli.sharded import ScaleOptions
    from effnet_cli.similar.build import update_index
    from effnet_cli.similar.query import index_settings
    from effnet_cli.similar.store import check_index_settings, is_index, read_index

    stored = read_index(output) if is_index(output) else None
    previous = 0
    if stored is not None and overwrite:
        previous, stored = stored.generation, None
    paths = gather_inputs(inputs, null)
    engine, spec = _index_spec(options, scale or ScaleOptions(), len(paths))
    settings = index_settings(engine, spec, features)
    if stored is not None:
        check_index_settings(stored, settings)  # before any image is read
    embed = None if scale is None else _sharded_embedder(
        output, engine, spec, scale, features, settings, checkpoint=checkpoint, batch_size=options.batch_size,
        workers=workers, quiet=quiet, show=show)
    with progress_bar(len(paths), show and embed is None, "index") as advance:
        def on_batch(results: list[Any]) -> None:
            for result in results:
                if not result.ok:
                    report_failure(result, quiet)
            advance(len(results))

        try:
            summary = update_index(output, engine, settings, paths, stored=stored, checkpoint=checkpoint,
                                   embed_kwargs={"batch_size": options.batch_size, "workers": resolve_workers(workers)},
                                   use_hash=use_hash, on_batch=on_batch if embed is None else None,
                                   previous_generation=previous, embed=embed)
        except KeyboardInterrupt:
            error_line(f"interrupted; {display_path(output)} keeps what was committed: rerun the same command "
                       f"to finish it")
            return EXIT_INTERRUPTED
    if embed is not None:
        from effnet_cli.similar.store import remove_staging

        remove_staging(output)  # committed: the shards have served
    if not quiet:
        _note_approximate(summary.count)
        info_line(f"{summary.line()} in {time.monotonic() - started:.1f} s; {display_path(output)} holds "
                  f"{summary.count:,} image{'s' if summary.count != 1 else ''}")
    return EXIT_SOME_FAILED if summary.failures else EXIT_OK


def _note_approximate(count: int) -> None:
    """One line when an index large enough for an approximate index gets none: faiss-cpu is missing."""
    from effnet_cli.similar import ann

    if count >= ann.MIN_ROWS and not ann.available():
        info_line(f"no approximate index for {count:,} images: it needs faiss-cpu (pip install 'effnet[similar]'); "
                  f"search stays exact")


def _embedder(args: dict[str, Any], stored: Any, features: str) -> Any:
    """A function embedding paths with the index's own model and features (loaded on first use), or the options'."""
    from effnet_cli.similar.features import embed_images
    from effnet_cli.similar.query import spec_of

    loaded: list[Any] = []

    def embed(paths: list[str]) -> Any:
        if not loaded:
            options = _engine_options(args, features)
            if stored is not None:  # the index's model, whatever --model says: other features would not compare
                from dataclasses import replace

                options = replace(options, model=stored.settings["model"], variant=None,
                                  dtype=opt.DType(stored.settings["dtype"]), revision=spec_of(stored.settings).revision,
                                  exact_decode=stored.settings["decode"] == "full")
            loaded.append(load_engine(options, inputs=len(paths)))
        return embed_images(loaded[0], paths, features, batch_size=args["batch_size"],
                            workers=resolve_workers(args["workers"]))

    return embed


def search(
    queries: Annotated[list[str], typer.Argument(help="Query images (paths, directories, globs, - for stdin).",
                                                 metavar="QUERY...", show_default=False)],
    index_dir: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Neighbours per query.")] = 10,
    format: FormatOpt = None,
    null: opt.Null = False,
    max_pixels: opt.MaxPixels = None,
    decode_timeout: opt.DecodeTimeout = None,
    device: opt.Device = "auto",
    batch_size: opt.BatchSize = 16,
    workers: opt.Workers = None,
    backend: opt.BackendOpt = opt.BackendKind.auto,
    quiet: opt.Quiet = False,
) -> int:
    """The k most similar indexed images of each query image.

    Examples:

      effnet search holiday.jpg --index photos.index -k 5

      effnet search photos/2024/ --index photos.index --format jsonl

    A query that is in the index uses its stored vector (and is not its own neighbour); any other is
    embedded with the index's model. Records: query, rank, path, score (cosine similarity).
    Exit status: 0 all queries answered, 1 some could not be read, 2 usage error.
    """
    from effnet_cli.similar.query import approximate_of, search_index
    from effnet_cli.similar.store import read_index

    started = time.monotonic()
    if index_dir is None:
        raise InputError("Give the index to search with --index INDEX (made by `effnet index`).")
    stored = read_index(index_dir)  # a directory that is not an index: a usage error before anything else
    require_inputs(queries)
    paths = gather_inputs(queries, null)
    # The index's own model, dtype and decoding embed the queries (see _embedder).
    args = {**locals(), "variant": None, "model": None, "revision": None, "exact_decode": True,
            "dtype": opt.DType.float32}
    approximate, note = approximate_of(stored)
    if note is not None and not quiet:
        info_line(note)
    results = search_index(stored, paths, k, _embedder(args, stored, stored.settings["features"]), approximate)
    fmt = (format.value if format is not None else None) or ("table" if sys.stdout.isatty() else "jsonl")
    failed = _render_search(results, fmt, quiet)
    if not quiet:
        info_line(f"searched {len(paths)} quer{'ies' if len(paths) != 1 else 'y'} ({failed} failed) against "
                  f"{len(stored):,} images{' (approximate index)' if approximate is not None else ''} in "
                  f"{time.monotonic() - started:.1f} s")
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _render_search(results: list[Any], fmt: str, quiet: bool) -> int:
    from effnet_cli.records.pathtext import path_fields
    from effnet_cli.records.rows import RowWriter
    from effnet_cli.records.stream import utf8_text

    failed = 0
    if fmt == "table":
        from rich.table import Table
        from rich.text import Text

        console = stdout_console()
        for result in results:
            if result.error is not None:
                failed += 1
                error_line(f"{result.query}: {result.error}")
                continue
            console.print(Text(shown_text(result.query), style="bold"), highlight=False, crop=False)
            table = Table(show_edge=False, pad_edge=False)
            for name, justify in (("#", "right"), ("path", "left"), ("score", "right")):
                table.add_column(name, justify=justify)  # type: ignore[arg-type]
            for hit in result.hits:
                table.add_row(str(hit.rank), Text(shown_text(hit.path)), f"{hit.score:.3f}")
            console.print(table)
            console.print()
        return failed
    utf8_stdout()
    writer = RowWriter(sys.stdout, fmt, SEARCH_COLUMNS)
    for result in results:
        query = utf8_text(result.query)
        if result.error is not None:
            failed += 1
            report_failure(_Failed(result.query, result.error), quiet)
            writer.write([{"query": query, "error": utf8_text(result.error)}])
            continue
        writer.write([{"query": query, "rank": h.rank, **path_fields(h.path), "score": round(h.score, 6)}
                      for h in result.hits])
    writer.close()
    return failed


class _Failed:
    """What :func:`report_failure` prints: a path and its error."""

    def __init__(self, path: str, error: str) -> None:
        self.path, self.error = path, error
