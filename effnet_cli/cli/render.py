"""Everything the terminal sees: tables, progress, error lines, exit statuses.

Data goes to stdout; progress, warnings and errors to stderr. Rich honours
``NO_COLOR`` and drops colour and animation when a stream is not a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

# Typer >= 0.20 vendors its own click and raises TyperException; older releases raise
# click's own classes. Import click only for those, keeping `effnet --help` fast.
if hasattr(typer, "TyperException"):
    _EXIT, _ABORT, _USAGE = (typer.Exit,), (typer.Abort,), (typer.TyperException,)
else:  # pragma: no cover - depends on the installed typer
    import click

    _EXIT, _ABORT, _USAGE = (click.exceptions.Exit,), (click.exceptions.Abort,), (click.ClickException,)
from rich.console import Console
from rich.table import Table

from effnet_cli.errors import ConfigError, EffnetError, InputError

if TYPE_CHECKING:
    from effnet_cli.results import Result

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    """A console on the current stdout (looked up late, so tests that swap sys.stdout see the output)."""
    return Console(file=sys.stdout, highlight=False)


def error_line(message: str) -> None:
    """One line on stderr, prefixed so it is easy to grep out of a log."""
    if stderr.is_terminal:
        stderr.print(f"[bold red]effnet:[/] {message}", markup=True, highlight=False)
    else:  # plain text for logs and pipes, flushed at once so it interleaves with stdout in order
        print(f"effnet: {message}", file=sys.stderr, flush=True)


def info_line(message: str) -> None:
    """A note for the user on stderr (never on stdout, which carries data)."""
    if stderr.is_terminal:
        stderr.print(f"[dim]effnet: {message}[/]", markup=True, highlight=False)
    else:
        print(f"effnet: {message}", file=sys.stderr, flush=True)


def run_app(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run the Typer app; turn user errors into one line and an exit status instead of a traceback."""
    try:
        result = app(args=args, standalone_mode=False, prog_name="effnet")
        return int(result or 0)
    except _EXIT as exc:
        return exc.exit_code
    except _ABORT:
        error_line("interrupted")
        return EXIT_INTERRUPTED
    except _USAGE as exc:  # bad option, missing argument: usage errors
        exc.show()
        return getattr(exc, "exit_code", EXIT_USAGE)
    except (InputError, ConfigError) as exc:
        error_line(str(exc))
        return EXIT_USAGE
    except EffnetError as exc:
        error_line(str(exc))
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:
        error_line("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `effnet classify ... | head`: the reader left, nothing more to say
        sys.stderr.close()
        return EXIT_OK


def report_failure(result: Result, quiet: bool) -> None:
    """The per-input error line on stderr."""
    if not quiet:
        error_line(f"{result.path}: {result.error}")


def render_table(console: Console, result: Result) -> None:
    """A Rich table of one image's predictions: rank, label, score as a percentage."""
    # The path goes on its own line: as a table title it would wrap to the table's width.
    console.print(result.path, style="bold", markup=False, highlight=False, overflow="ignore", crop=False)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("label")
    table.add_column("index", justify="right", style="dim")
    table.add_column("score", justify="right")
    for p in result.predictions or []:
        table.add_row(str(p.rank), p.label, str(p.index), f"{p.score * 100:.1f}%")
    console.print(table)
    console.print()


@contextmanager
def progress_bar(total: int, enabled: bool, description: str) -> Iterator[Any]:
    """A Rich progress bar on stderr; yields ``advance(n)``. A no-op when disabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def progress_enabled(flag: bool | None, quiet: bool) -> bool:
    """Progress is on when asked for, else when stderr is a terminal and not --quiet."""
    if quiet:
        return False
    return stderr.is_terminal if flag is None else flag
