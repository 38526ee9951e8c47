"""``effnet dedupe``: groups of near-duplicate images, from an index or from images embedded now.

effnet never deletes or moves a file: ``--format paths`` prints the removable ones for ``xargs rm``.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any, Optional

import typer

from effnet_cli.cli import options as opt
from effnet_cli.cli.common import gather_inputs, probe_hub_early, require_inputs
from effnet_cli.cli.render import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    info_line,
    report_failure,
    shown_text,
    stdout_console,
    utf8_stdout,
)
from effnet_cli.cli.similar import DEDUPE_COLUMNS, DedupeFormat, FeaturesOpt, IndexDir, Keep, _embedder
from effnet_cli.errors import InputError


def dedupe(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Images (files, directories, globs, - for stdin), or none with --index.", metavar="[IMAGE...]",
        show_default=False)] = None,
    index_dir: IndexDir = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", "-t", help="Cosine similarity from which two images are the same picture. [default: the "
                                  "near-duplicate benchmark's choice: 0.83 for layout features, 0.85 for head]",
        show_default=False)] = None,
    features: FeaturesOpt = None,
    keep: Annotated[Keep, typer.Option("--keep", help="Which member of a group to keep.")] = Keep.largest,
    format: Annotated[Optional[DedupeFormat], typer.Option(
        "--format", "-f", help="table when stdout is a terminal, else jsonl; paths: only the removable files.",
        show_default=False)] = None,
    null: Annotated[bool, typer.Option("--null", "-0", help="NUL-separated paths: on stdin with -, and "
                                                            "--format paths' output (for xargs -0).")] = False,
    max_pixels: opt.MaxPixels = None,
    decode_timeout: opt.DecodeTimeout = None,
    variant: opt.VariantOpt = None,
    model: opt.ModelOpt = None,
    revision: opt.Revision = None,
    device: opt.Device = "auto",
    dtype: opt.DTypeOpt = opt.DType.float32,
    batch_size: opt.BatchSize = 16,
    workers: opt.Workers = None,
    backend: opt.BackendOpt = opt.BackendKind.auto,
    quiet: opt.Quiet = False, report: opt.NewReport = None,
) -> int:
    """Groups of near-duplicate images (re-encoded, resized, cropped, brightened copies).

    Examples:

      effnet dedupe photos/

      effnet dedupe --index photos.index --keep oldest

      effnet dedupe --index photos.index --format paths -0 | xargs -0 rm --

    Each group lists its members with size, modification time and similarity to the one kept
    (--keep largest, oldest or first). effnet never deletes or moves a file.
    Exit status: 0 done (groups or none), 1 some images could not be read, 2 usage error.
    """
    from effnet_cli.similar.features import DEFAULT_FEATURES, check_features
    from effnet_cli.similar.groups import check_dedupe_options, default_threshold, find_groups
    from effnet_cli.similar.query import embed_entries
    from effnet_cli.similar.store import read_index

    started = time.monotonic()
    if threshold is not None:
        check_dedupe_options(threshold, keep.value)  # before an index is read or a model loaded
    if bool(inputs) == (index_dir is not None):
        raise InputError("Give images to compare or --index INDEX, one of the two.")
    if index_dir is not None and features is not None:
        raise InputError("--features is chosen when the index is built; `effnet dedupe --index` uses the index's.")
    kind = DEFAULT_FEATURES if features is None else features
    check_features(kind)
    stored = read_index(index_dir) if index_dir is not None else None
    kind = stored.settings["features"] if stored is not None else kind
    threshold = default_threshold(kind) if threshold is None else threshold
    check_dedupe_options(threshold, keep.value)
    failures: list[Any] = []
    if stored is not None:
        vectors, entries = stored.vectors, stored.entries
    else:
        require_inputs(inputs or [])
        probe_hub_early(variant, model)
        paths = gather_inputs(inputs or [], null)
        args = {**locals(), "exact_decode": True}
        entries, vectors, failures = embed_entries(_embedder(args, None, kind), paths)
        for failure in failures:
            report_failure(failure, quiet)
    groups = find_groups(vectors, entries, threshold=threshold, keep=keep.value, approximate=_approximate(stored, quiet))
    fmt = (format.value if format is not None else None) or ("table" if sys.stdout.isatty() else "jsonl")
    _render(groups, fmt, null, report)
    if not quiet:
        removable = sum(len(g.removable) for g in groups)
        info_line(f"{len(groups):,} group{'s' if len(groups) != 1 else ''} of near-duplicates among "
                  f"{len(entries):,} images ({removable:,} removable, threshold {threshold:g}) in "
                  f"{time.monotonic() - started:.1f} s; nothing was deleted")
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _approximate(stored: Any, quiet: bool) -> Any:
    """A large index's approximate index, whose neighbours give the candidate pairs (None: every pair compared)."""
    if stored is None:
        return None
    from effnet_cli.similar.query import approximate_of

    approximate, note = approximate_of(stored)
    if note is not None and not quiet:
        info_line(note.replace("exact search", "every pair compared", 1))
    return approximate


def _records(groups: list[Any]) -> list[dict[str, Any]]:
    import datetime as dt

    from effnet_cli.records.pathtext import path_fields

    rows = []
    for number, group in enumerate(groups, 1):
        for i, member in enumerate(group.members):
            mtime = dt.datetime.fromtimestamp(member.mtime_ns / 1e9, dt.timezone.utc).isoformat(timespec="seconds")
            rows.append({"group": number, **path_fields(member.path), "size": member.size, "mtime": mtime,
                         "keep": i == group.keep, "score": round(group.scores[i], 6)})
    return rows


def _render(groups: list[Any], fmt: str, null: bool, report: Any = None) -> None:
    from effnet_cli.report.dedupe import write_dedupe_report

    write_dedupe_report(report, groups)  # --report: the page first, then the records
    if fmt == "paths":
        out = sys.stdout.buffer
        import os

        for group in groups:
            for member in group.removable:
                out.write(os.fsencode(member.path) + (b"\0" if null else b"\n"))
        out.flush()
        return
    if fmt == "table":
        _render_table(groups)
        return
    from effnet_cli.records.rows import RowWriter

    utf8_stdout()
    writer = RowWriter(sys.stdout, fmt, DEDUPE_COLUMNS)
    writer.write(_records(groups))
    writer.close()


def _render_table(groups: list[Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    for number, group in enumerate(groups, 1):
        table = Table(title=f"group {number}", title_justify="left", show_edge=False, pad_edge=False)
        for name, justify in (("keep", "left"), ("path", "left"), ("size", "right"), ("score", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for i, member in enumerate(group.members):
            table.add_row("keep" if i == group.keep else "", Text(shown_text(member.path)),
                          f"{member.size:,}", f"{group.scores[i]:.3f}")
        console.print(table)
        console.print()


__all__ = ["dedupe"]
