"""The ``effnet`` command: wiring only. Each command lives in its own module.

Nothing here imports torch: ``effnet --help`` must stay fast. Errors a user
can cause arrive as :class:`effnet_cli.errors.EffnetError` and leave as one
line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from effnet_cli import __version__
from effnet_cli.cli import classify, config_cmd, convert, embed, finetune

app = typer.Typer(
    name="effnet",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"effnet {__version__}")
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


app.command("classify", no_args_is_help=True)(classify.classify)
app.command("embed", no_args_is_help=True)(embed.embed)
app.command("convert", no_args_is_help=True)(convert.convert)
app.command("finetune", no_args_is_help=True)(finetune.finetune)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    """Console-script entry point."""
    from effnet_cli.cli.render import run_app

    sys.exit(run_app(app))
