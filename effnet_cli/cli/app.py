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
from effnet_cli.cli import classify, config_cmd, convert, embed, export, finetune
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
app.add_typer(config_cmd.app, name="config")


def _thread_waiting_policy() -> None:
    """Let the model's threads sleep, not spin, while they wait for work, unless the user chose otherwise.

    OpenMP reads OMP_WAIT_POLICY once, when torch loads, so it is set here, before any
    command imports torch. Spinning threads make no progress when another program holds their
    core, and the model's threads wait for the slowest of them at the end of every op: with
    busy processes on the cores the CLI's throughput collapsed (docs/benchmarks.md).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    """Console-script entry point."""
    from effnet_cli.cli.render import run_app

    _thread_waiting_policy()

    sys.exit(run_app(app))
