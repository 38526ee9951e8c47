"""The ``effnet`` command: wiring only. Each command lives in its own module.

Nothing here imports torch: ``effnet --help`` must stay fast. Errors a user
can cause arrive as :class:`effnet_cli.errors.EffnetError` and leave as one
line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from effnet_cli.host import EFFNET_VERSION
from effnet_cli.cli import classify, config_cmd, convert, dedupe, embed, explain, export, finetune, similar
from effnet_cli.cli.render import Command

app = typer.Typer(
    name="effnet",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"effnet {EFFNET_VERSION}")
        raise typer.Exit()


@app.callback()
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


app.command("classify", cls=Command)(classify.classify)
app.command("embed", cls=Command)(embed.embed)
app.command("convert", cls=Command)(convert.convert)
app.command("export", cls=Command)(export.export)
app.command("finetune", cls=Command)(finetune.finetune)
app.command("index", cls=Command)(similar.index)
app.command("search", cls=Command)(similar.search)
app.command("dedupe", cls=Command)(dedupe.dedupe)
app.command("explain", cls=Command)(explain.explain)
app.add_typer(config_cmd.app, name="config")


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
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in ("classify", "embed"):
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

    sys.exit(run_app(app))
