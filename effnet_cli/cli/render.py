"""Everything the terminal sees: tables, progress, error lines, exit statuses.

Data goes to stdout; progress, warnings and errors to stderr. Rich honours
``NO_COLOR`` and drops colour and animation when a stream is not a terminal.
"""

from __future__ import annotations

import re
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
        return params


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
        sys.stderr.close()
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
    # Older Typer releases validate with click, whose sentences differ: "0 is not in the range x>=1.",
    # "'abc' is not a valid integer.", "'xml' is not one of 'table', …".
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
    parsed = re.fullmatch(r"(.+?) is not a valid (integer|float)(?: range)?\.?", text)
    if parsed and name:
        return f"{name} must be {'a whole number' if parsed.group(2) == 'integer' else 'a number'}; got {parsed.group(1)}."
    choices = re.fullmatch(r"(.+) is not one of (.+?)\.?", text)
    if choices and name:
        listed = ", ".join(re.findall(r"'([^']*)'", choices.group(2))) or choices.group(2)
        message = f"{name} must be one of {listed}; got {choices.group(1)}"
        return message + _variant_hint(name, choices.group(1).strip("'")) + "."
    text = text.rstrip(".")
    if name and name not in text:
        return f"{name}: {text[:1].lower() + text[1:]}."
    return f"{text[:1].upper() + text[1:]}."


def _variant_hint(option: str, value: str) -> str:
    # A Lite variant effnet knows but has no weights for: say how to get them rather than only refuse it.
    from effnet_cli.config import VARIANTS

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
