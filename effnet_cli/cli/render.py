"""Everything the terminal sees: tables, progress, error lines, exit statuses.

Data goes to stdout; progress, warnings and errors to stderr. Rich honours
``NO_COLOR`` and drops colour and animation when a stream is not a terminal.
"""

from __future__ import annotations

import errno
import os
import sys
import unicodedata
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
from rich.text import Text

from effnet_cli.errors import ConfigError, EffnetError, InputError
from effnet_cli.pathtext import display_path

if TYPE_CHECKING:
    from effnet_cli.results import Result

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    """A console on the current stdout (looked up late, so tests that swap sys.stdout see the output).

    On a terminal whose encoding is not UTF-8, a character it cannot show is
    replaced by "?" rather than stopping the run.
    """
    stream = sys.stdout
    if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
        stream.reconfigure(errors="replace")
    return Console(file=stream, highlight=False)


def utf8_stdout() -> None:
    """Make stdout encode UTF-8 whatever the locale: machine records are UTF-8 text by definition.

    The records themselves never hold a character UTF-8 cannot encode (see
    :mod:`effnet_cli.pathtext`), so this stays strict.
    """
    stream = sys.stdout
    if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
        stream.reconfigure(encoding="utf-8", errors="strict")


def shown_text(text: str) -> str:
    """``text`` as a terminal or a log line may show it: valid UTF-8, control characters made visible.

    A name is printed, not interpreted: a carriage return or an escape sequence in
    it must neither move the cursor nor colour the screen, and a newline must not
    break the one line an error takes. Bytes that are not UTF-8 show as U+FFFD;
    the records on stdout keep the exact name (see :mod:`effnet_cli.pathtext`).
    """
    try:
        text = display_path(text)
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(_CONTROL_SHOWN.get(c, f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c)
                   for c in text)


_CONTROL_SHOWN = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def error_line(message: str) -> None:
    """One line on stderr, prefixed so it is easy to grep out of a log.

    ``message`` is plain text, never markup: it often quotes a path or a value the user typed.
    """
    message = shown_text(message)
    if stderr.is_terminal:
        stderr.print(Text.assemble(("effnet:", "bold red"), " ", message), highlight=False)
    else:  # plain text for logs and pipes, flushed at once so it interleaves with stdout in order
        print(f"effnet: {message}", file=sys.stderr, flush=True)


def info_line(message: str) -> None:
    """A note for the user on stderr (never on stdout, which carries data); plain text, never markup."""
    message = shown_text(message)
    if stderr.is_terminal:
        stderr.print(Text(f"effnet: {message}", style="dim"), highlight=False)
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
        return _reader_left()
    except SystemExit as exc:
        # click (and Rich) turn EPIPE into exit 1 themselves, before the handler above can see it;
        # the BrokenPipeError they caught is still the exit's context.
        if _is_broken_pipe(exc.__context__):
            return _reader_left()
        raise


def _is_broken_pipe(error: BaseException | None) -> bool:
    return isinstance(error, OSError) and error.errno == errno.EPIPE


def _reader_left() -> int:
    """Stdout's reader went away (``| head``): exit 0 quietly, as ``cat`` and ``grep`` do under pipefail.

    Whatever is still buffered for stdout would fail again when Python flushes it
    at exit and print a traceback-like notice, so stdout is pointed at /dev/null.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a file descriptor (an in-process runner)
        return EXIT_OK
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return EXIT_OK


def report_failure(result: Result, quiet: bool) -> None:
    """The per-input error line on stderr."""
    if not quiet:
        error_line(f"{result.path}: {result.error}")


def render_table(console: Console, result: Result) -> None:
    """A Rich table of one image's predictions: rank, label, score as a percentage.

    The path and the labels are printed as text, never as markup (``photo [edited].jpg``
    shows as itself); control characters in a name are shown escaped (:func:`shown_text`).
    """
    # The path goes on its own line: as a table title it would wrap to the table's width.
    console.print(Text(shown_text(result.path), style="bold"), highlight=False, overflow="ignore", crop=False)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("label")
    table.add_column("index", justify="right", style="dim")
    table.add_column("score", justify="right")
    for p in result.predictions or []:
        table.add_row(str(p.rank), Text(shown_text(p.label)), str(p.index), f"{p.score * 100:.1f}%")
    console.print(table)
    console.print()


@contextmanager
def progress_bar(total: int, enabled: bool, description: str) -> Iterator[Any]:
    """A Rich progress bar on stderr; yields ``advance(n)``. A no-op when disabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def progress_enabled(flag: bool | None, quiet: bool) -> bool:
    """Progress is on when asked for, else when stderr is a terminal and not --quiet."""
    if quiet:
        return False
    return stderr.is_terminal if flag is None else flag
