"""Everything the terminal sees: tables, progress, error lines, exit statuses.

Data goes to stdout; progress, warnings and errors to stderr. Rich honours
``NO_COLOR`` and drops colour and animation when a stream is not a terminal.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
import unicodedata
import warnings
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
from effnet_cli.errors import ConfigError, EffnetError, EffnetWarning, InputError
from effnet_cli.records.pathtext import display_path

if TYPE_CHECKING:
    from rich.console import Console

    from effnet_cli.records.results import Result

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

@functools.lru_cache(maxsize=1)
def stderr_console() -> Console:
    """The Rich console on stderr, made (and Rich imported, about 10 ms) only when something is shown with it."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stderr_is_terminal() -> bool:
    """Whether Rich treats stderr as a terminal; answered without importing Rich when stderr is a plain stream.

    Rich says no for a stream that is not a TTY unless the environment forces it (FORCE_TERMINAL,
    TTY_COMPATIBLE, FORCE_COLOR); only then is it asked.
    """
    forced = any(os.environ.get(name) is not None for name in ("FORCE_TERMINAL", "TTY_COMPATIBLE", "FORCE_COLOR"))
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):
        tty = False
    return stderr_console().is_terminal if (tty or forced) else False


def stdout_console() -> Console:
    """A console on the current stdout (looked up late, so tests that swap sys.stdout see the output).

    On a terminal whose encoding is not UTF-8, a character it cannot show is
    replaced by "?" rather than stopping the run.
    """
    stream = sys.stdout
    if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
        stream.reconfigure(errors="replace")
    from rich.console import Console

    return Console(file=stream, highlight=False)


def utf8_stdout() -> None:
    """Make stdout encode UTF-8 whatever the locale: machine records are UTF-8 text by definition.

    The records themselves never hold a character UTF-8 cannot encode (see
    :mod:`effnet_cli.records.pathtext`), so this stays strict.
    """
    stream = sys.stdout
    if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
        stream.reconfigure(encoding="utf-8", errors="strict")


def shown_text(text: str) -> str:
    """``text`` as a terminal or a log line may show it: valid UTF-8, control characters made visible.

    A name is printed, not interpreted: a carriage return or an escape sequence in
    it must neither move the cursor nor colour the screen, and a newline must not
    break the one line an error takes. Bytes that are not UTF-8 show as U+FFFD;
    the records on stdout keep the exact name (see :mod:`effnet_cli.records.pathtext`).
    """
    text = display_path(text)
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
    if stderr_is_terminal():
        from rich.text import Text

        stderr_console().print(Text.assemble(("effnet:", "bold red"), " ", message), highlight=False)
    else:  # plain text for logs and pipes, flushed at once so it interleaves with stdout in order
        print(f"effnet: {message}", file=sys.stderr, flush=True)


def info_line(message: str) -> None:
    """A note for the user on stderr (never on stdout, which carries data); plain text, never markup."""
    message = shown_text(message)
    if stderr_is_terminal():
        from rich.text import Text

        stderr_console().print(Text(f"effnet: {message}", style="dim"), highlight=False)
    else:
        print(f"effnet: {message}", file=sys.stderr, flush=True)


class Command(typer.core.TyperCommand):
    """A Typer command whose usage line and help name arguments by their metavar: ``IMAGE...``.

    Typer writes a required list argument as ``{inputs}...`` in the usage line
    and adds its Python type (``<list[str]>``) in the help; neither means
    anything to a user.
    """

    def collect_usage_pieces(self, ctx):  # noqa: ANN001, ANN201 - Typer's signature
        pieces = [re.sub(r"^\{(.+)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]
        return [re.sub(r"(\.\.\.)+$", "...", piece) for piece in pieces]  # "IMAGE..." once, whichever Typer

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - Typer's signature
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "param_type_name", "") == "argument" and getattr(param, "metavar", None):
                param.display_type_rich = lambda ctx: None  # the metavar says it all
            elif getattr(param, "param_type_name", "") == "option" and not getattr(param, "metavar", None) \
                    and not getattr(param, "is_flag", False):
                # "--device <str>", "--lr <float>" tell a user the Python type; say what the value is.
                try:
                    shown = param.display_type(ctx)
                except (AttributeError, TypeError):  # Typer before 0.29 shows click's own metavar
                    try:
                        shown = param.make_metavar(ctx)
                    except (AttributeError, TypeError):
                        continue
                generic = {"<int>": "N", "<int range>": "N", "<float>": "NUMBER", "<float range>": "NUMBER",
                           "<path>": "PATH", "<str>": "TEXT"}
                if shown in generic:
                    param.metavar = _METAVARS.get(param.name or "", generic[shown])
        return params


# The value of an option as a user names it, where its type alone would say "<str>" or "<path>".
_METAVARS = {"model": "MODEL", "revision": "REV", "device": "DEVICE", "devices": "DEVICES", "output_dir": "DIR",
             "shard": "I/N", "meta_format": "parquet|jsonl", "ray_address": "ADDRESS", "freeze": "backbone|none|N",
             "val": "PATH", "output": "PATH", "labels": "FILE", "threshold": "0-1"}


def quiet_libraries() -> None:
    """Hide library log lines that mean nothing to someone running effnet.

    torch's C++-extension helper logs "No CUDA runtime is found" when CUDA_HOME is set on a machine
    without a GPU, the moment torch.compile imports it.
    """
    import logging

    for name in ("torch.utils.cpp_extension", "torch._inductor", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_app(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run the Typer app; turn user errors into one line and an exit status instead of a traceback."""
    quiet_libraries()
    previous = warnings.showwarning

    def one_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        """effnet's own warnings as one ``effnet: warning: ...`` line; any other library's as before."""
        if issubclass(category, EffnetWarning):
            error_line(f"warning: {message}")
        else:
            previous(message, category, *args, **kwargs)

    with warnings.catch_warnings():  # a fresh registry per run: each run shows its warnings once
        warnings.simplefilter("default", EffnetWarning)
        warnings.showwarning = one_line
        return _run_app(app, args)


def _run_app(app: typer.Typer, args: Sequence[str] | None) -> int:
    try:
        result = app(args=args, standalone_mode=False, prog_name="effnet")
        return int(result or 0)
    except _EXIT as exc:
        return exc.exit_code
    except _ABORT:
        error_line("interrupted")
        return EXIT_INTERRUPTED
    except _USAGE as exc:  # bad option, missing argument: usage errors
        code = getattr(exc, "exit_code", EXIT_USAGE)
        if code != EXIT_USAGE:  # not a usage error (e.g. a parser's own non-usage exception): its own text
            exc.show()
            return code
        error_line(usage_message(exc))
        command = getattr(getattr(exc, "ctx", None), "command_path", None) or "effnet"
        print(f"Try '{command} --help' for the options.", file=sys.stderr, flush=True)
        return EXIT_USAGE
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


def usage_message(exc: Exception) -> str:
    """effnet's one sentence for an error of the option parser, in place of the parser's own wording.

    The parser (Typer, validating through pydantic in recent releases) says
    "Value error, 'xml' is not one of …" or "Input should be greater than or
    equal to 1"; users get "--format must be one of table, json, …; got 'xml'."
    """

    param = getattr(exc, "param", None)
    opts = [o for o in getattr(param, "opts", None) or [] if o.startswith("-")]
    is_argument = param is not None and not opts
    name = (max(opts, key=len) if opts else (getattr(param, "metavar", None) or getattr(param, "name", "") or "")
            ).removesuffix("...")
    if type(exc).__name__ == "MissingParameter" and param is not None:
        if is_argument:
            help_text = (getattr(param, "help", None) or "").rstrip(".")
            return f"missing {name}" + (f": {help_text[0].lower() + help_text[1:]}" if help_text else "") + "."
        return f"{name} needs a value."
    cause = exc.__cause__
    error = cause.errors()[0] if cause is not None and hasattr(cause, "errors") and cause.errors() else None
    given = repr(error["input"]) if error is not None and "input" in error else None
    text = error["msg"] if error is not None else getattr(exc, "message", None) or str(exc)
    if error is None and type(exc).__name__ == "NoSuchOption":
        text = exc.format_message()  # with its "(Possible options: …)" suggestion
    text = str(text).removeprefix("Value error, ").strip()
    if error is not None and name:
        kind, ctx = error.get("type", ""), error.get("ctx") or {}
        bounds = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le"),
                  "greater_than": ("more than", "gt"), "less_than": ("less than", "lt")}
        if kind in bounds and bounds[kind][1] in ctx:
            words, key = bounds[kind]
            return f"{name} must be {words} {ctx[key]}; got {error['input']}."
        if kind in ("int_parsing", "int_from_float", "int_type"):
            return f"{name} must be a whole number; got {given}."
        if kind in ("float_parsing", "float_type"):
            return f"{name} must be a number; got {given}."
        if kind == "bool_parsing":
            return f"{name} must be true or false; got {given}."
    # Typer before 0.29 validates with click, whose sentences differ: "0 is not in the range x>=1.",
    # "'abc' is not a valid integer." ("… int range." for a bounded one), "'xml' is not one of 'table', …".
    ranged = re.fullmatch(r"'?(.+?)'? is not in the range (.+?)\.?", text)
    if ranged and name:
        low = re.search(r"x>=?(-?[\d.]+)", ranged.group(2)) or re.match(r"(-?[\d.]+)<=?x", ranged.group(2))
        high = re.search(r"x<=?(-?[\d.]+)", ranged.group(2))
        try:
            below = low is not None and float(ranged.group(1)) < float(low.group(1))
        except ValueError:
            below = low is not None
        if below or (low is not None and high is None):
            return f"{name} must be at least {low.group(1)}; got {ranged.group(1)}."
        if high is not None:
            return f"{name} must be at most {high.group(1)}; got {ranged.group(1)}."
    parsed = re.fullmatch(r"(.+?) is not a valid (integer|int|float)(?: range)?\.?", text)
    if parsed and name:
        whole = parsed.group(2) in ("integer", "int")
        return f"{name} must be {'a whole number' if whole else 'a number'}; got {parsed.group(1)}."
    choices = re.fullmatch(r"(.+) is not one of (.+?)\.?", text)
    if choices and name:
        listed = ", ".join(re.findall(r"'([^']*)'", choices.group(2))) or choices.group(2)
        message = f"{name} must be one of {listed}; got {choices.group(1)}"
        return message + _variant_hint(name, choices.group(1).strip("'")) + "."
    text = text.rstrip(".")
    end = "" if text.endswith(("?", "!")) else "."  # "Did you mean 'classify'?" keeps its own mark
    if name and name not in text:
        return f"{name}: {text[:1].lower() + text[1:]}{end}"
    return f"{text[:1].upper() + text[1:]}{end}"


def _variant_hint(option: str, value: str) -> str:
    # A Lite variant effnet knows but has no weights for: say how to get them rather than only refuse it.
    from effnet_cli.core.config import VARIANTS

    variant = VARIANTS.get(value.lower()) if option == "--variant" else None
    if variant is None or not variant.lite:
        return ""
    arch = f"tf_efficientnet_{variant.name}"
    return (f" ({variant.name} has no published weights: convert timm's {arch} checkpoint with "
            f"`effnet convert CKPT --from timm --arch {arch} -o DIR`, then use --model DIR)")


def summary_line(verb: str, total: int, failed: int, where: str, seconds: float, quiet: bool) -> None:
    """The closing line of a run on stderr: how many inputs, how many failed, where the output went, how long.

    ``effnet: classified 5 images (1 failed) in 2.4 s; results on stdout``. Nothing with --quiet.
    """
    if quiet:
        return
    noun = "image" if total == 1 else "images"
    failures = f" ({failed} failed)" if failed else ""
    info_line(f"{verb} {total} {noun}{failures} in {seconds:.1f} s; {where}")


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
    from rich.table import Table
    from rich.text import Text

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
def progress_bar(total: int | None, enabled: bool, description: str) -> Iterator[Any]:
    """A Rich progress bar on stderr; yields ``advance(n, total=None)``. A no-op when disabled.

    ``total`` None: the count is not known yet (the inputs are still being read); ``advance``'s
    ``total`` gives it once it is.
    """
    if not enabled:
        yield lambda n, total=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n, total=None: progress.update(task, advance=n, **({} if total is None else {"total": total}))


def progress_enabled(flag: bool | None, quiet: bool) -> bool:
    """Progress is on when asked for, else when stderr is a terminal and not --quiet."""
    if quiet:
        return False
    return stderr_is_terminal() if flag is None else flag
