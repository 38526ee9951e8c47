"""The ``effnet`` command: wiring only. Each command lives in its own module.

Nothing here imports torch: ``effnet --help`` must stay fast. Errors a user
can cause arrive as :class:`effnet_cli.errors.EffnetError` and leave as one
line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer

from effnet_cli.host import EFFNET_VERSION

# The commands, in the help screen's order: name -> (module under effnet_cli.cli, function). `config` is a
# group of its own (config_cmd.app). A run imports only its command's module: the others cost a one-photo
# classify about 20 ms of imports, a tenth of what the whole run takes beyond a plain ONNX Runtime script.
COMMANDS = {"classify": ("classify", "classify"), "embed": ("embed", "embed"), "convert": ("convert", "convert"),
            "export": ("export", "export"), "finetune": ("finetune", "finetune"), "index": ("similar", "index"),
            "search": ("similar", "search"), "dedupe": ("dedupe", "dedupe"), "explain": ("explain", "explain")}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"effnet {EFFNET_VERSION}")
        raise typer.Exit()


def main_callback(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """EfficientNet image classification and embeddings, numerically identical to Hugging Face transformers.

    Examples:

      effnet classify photos/*.jpg --variant lite0

      find . -name '*.jpg' | effnet classify - --format jsonl

      effnet embed photos/ -o feats.npy

      effnet finetune my-classes/ -o my-model/
    """


def build_app(only: str | None = None) -> typer.Typer:
    """The ``effnet`` Typer app with every command, or with ``only`` that one (what a run of it needs)."""
    from effnet_cli.cli.render import Command

    app = typer.Typer(name="effnet", no_args_is_help=True, rich_markup_mode=None,
                      context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False)
    app.callback()(main_callback)
    for name, (module, function) in COMMANDS.items():
        if only in (None, name):
            app.command(name, cls=Command)(getattr(importlib.import_module(f"effnet_cli.cli.{module}"), function))
    if only in (None, "config"):
        from effnet_cli.cli import config_cmd

        app.add_typer(config_cmd.app, name="config")
    return app


def __getattr__(name: str) -> Any:
    """``app``: the app with every command, made when first asked for (the console script builds its own)."""
    if name == "app":
        globals()["app"] = built = build_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _command(argv: list[str]) -> str | None:
    """The command ``argv`` runs (its first word that is not an option), or None (``--help``, ``--version``, none)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _option(argv: list[str], long: str, short: str | None = None) -> str | None:
    """The last value given to an option in ``argv`` (``--opt V``, ``--opt=V``, ``-s V``, ``-sV``), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg in (long, short) and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(long + "="):
            value = arg[len(long) + 1:]
        elif short is not None and arg.startswith(short) and len(arg) > len(short) and not arg.startswith("--"):
            value = arg[len(short):]
    return value


def _thread_waiting_policy(argv: list[str]) -> None:
    """Choose how the model's threads wait for work (OMP_WAIT_POLICY), unless the user chose already.

    OpenMP reads OMP_WAIT_POLICY once, when torch loads, so it is set here, before any command
    imports torch. Sleeping (PASSIVE) is the default: spinning threads make no progress when
    another program holds their core, and the model's threads wait for the slowest of them at
    the end of every op, so with busy processes on the cores the CLI's throughput collapsed
    (docs/benchmarks.md). Single images (``classify``/``embed`` with ``--batch-size 1`` on
    PyTorch) are the exception while the machine is idle (load average below the usable cores):
    their ops are so short that waking sleeping threads for each one halves the forward's
    speed, so their threads spin (ACTIVE). The ONNX Runtime runner reads the same variable.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    policy = "PASSIVE"
    if _command(argv) in ("classify", "embed"):
        batch = _option(argv, "--batch-size", "-b")
        backend = _option(argv, "--backend") or os.environ.get("EFFNET_BACKEND", "auto")
        if batch is not None and batch.strip() == "1" and backend in ("auto", "torch") and _idle():
            policy = "ACTIVE"
    os.environ["OMP_WAIT_POLICY"] = policy


def _idle() -> bool:
    """Whether this machine's load average leaves every usable core free (spinning then steals from no one)."""
    from effnet_cli.host import usable_cores

    try:
        return os.getloadavg()[0] < usable_cores() - 0.5
    except OSError:
        return False


def main() -> None:
    """Console-script entry point."""
    from effnet_cli.cli.render import run_app

    _thread_waiting_policy(sys.argv[1:])
    command = _command(sys.argv[1:])
    # A known command gets an app with that command alone; anything else (the help screen, a misspelt
    # command, which Typer answers with the list of commands) the whole app.
    sys.exit(run_app(build_app(command if command in COMMANDS or command == "config" else None)))
