"""``effnet config``: variants, stage tables after compound scaling, config.json files.

Three commands, all pure arithmetic over :class:`EfficientNetConfig` (no torch,
so they answer instantly):

* ``list``  every published variant with its size, parameters, MACs and top-1;
* ``show``  the stage table of one variant or config.json at a given input size;
* ``save``  a config.json that transformers reads, for a variant or a new φ.

Parameter and MAC counts come from :mod:`effnet_cli.core.flops`; MACs are
multiply-adds, the unit the paper calls FLOPs (B0: 0.39 B).
"""

from __future__ import annotations

import json
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from effnet_cli.cli.render import Command, error_line, stdout_console
from effnet_cli.core.config import ALPHA, BETA, GAMMA, VARIANTS, EfficientNetConfig
from effnet_cli.core.config_v2 import EfficientNetV2Config, read_config, variant_config
from effnet_cli.weights.variants_v2 import V2_VARIANTS
from effnet_cli.core.flops import LayerCost, NetworkCost, network_cost
from effnet_cli.errors import ConfigError, InputError

if TYPE_CHECKING:  # Rich is imported where a table is printed: not on every command's start
    from rich.console import Console

app = typer.Typer(help="Inspect and write EfficientNet configs.", no_args_is_help=True)

ALL_VARIANTS = (*VARIANTS, *V2_VARIANTS)
# Shown under every stage table so the numbers there can be fed to `effnet embed` as they are.
STAGE_CAPTION = "Stage N is the output of `effnet embed --features stage:N` (N = 1..{n})."
FUSED_CAPTION = ("FusedMBn: Fused-MBConv, a k×k conv expanding n times, then a 1×1 projection "
                 "(FusedMB1: the k×k conv alone); MBConv stages have squeeze-excite.")
MACS_NOTE = "MACs: multiply-adds at the native size (the paper's \"FLOPs\"); FLOPs = 2 × MACs."


class Format(str, Enum):
    """How list/show print: a Rich table for people, JSON for scripts."""

    table = "table"
    json = "json"


FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table for reading, json for scripts.")]
ImageSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", "-s", min=1,
    # Rich would read a bare [default: ...] as a markup tag and drop it, hence the backslash.
    help="Input side in pixels for resolutions and MACs. [default: the config's image_size]",
    show_default=False)]


# ------------------------------------------------------------------ helpers
def load_config(source: str) -> tuple[EfficientNetConfig, str]:
    """The config a ``show`` argument names: a variant, a directory holding config.json, or a config.json.

    Returns the config and a display name. Paths win over variant names, so a
    directory called ``b0`` is read rather than shadowed by the variant.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise InputError(f"{source} is a directory without a config.json.")
    if path.is_file():
        try:
            return read_config(path), str(path)
        except ConfigError as exc:
            message = str(exc)  # a JSON error names the file already; a field error does not
            raise ConfigError(message if str(path) in message else f"{path}: {message}") from None
    key = variant_key(source)
    if key is not None:
        return variant_config(key), key
    if os.sep in source or "/" in source or source.endswith(".json"):
        raise InputError(f"No such file or directory: {source}.")
    raise ConfigError(f"Unknown variant {source!r}; choose one of {', '.join(ALL_VARIANTS)}, "
                      "or give a directory or config.json path.")


def variant_key(name: str) -> str | None:
    """The VARIANTS key a name means (``b3``, ``EfficientNet-B3``, ``google/efficientnet-b3``), or None."""
    # The hub's google/efficientnet-bN configs are exactly the published variants, so name them offline.
    key = name.lower().removeprefix("google/").removeprefix("efficientnet-").removeprefix("efficientnet_")
    return key if key in VARIANTS or key in V2_VARIANTS else None


def load_variant(name: str) -> tuple[EfficientNetConfig, str]:
    """A published variant's config, with the same error for a bad name as ``show``."""
    key = variant_key(name)
    if key is None:
        raise ConfigError(f"Unknown variant {name!r}; choose one of {', '.join(ALL_VARIANTS)}.")
    return variant_config(key), key


def checked_cost(config: EfficientNetConfig, image_size: int | None) -> NetworkCost:
    """The network's cost at ``image_size``, refusing sizes that shrink a feature map to nothing."""
    cost = network_cost(config, image_size)
    if any(row.output_size < 1 for row in cost.rows):
        raise InputError(f"--image-size {image_size} is too small: a stride-2 layer would have no output pixels.")
    return cost


def operator(row: LayerCost) -> str:
    """The paper's name for a row: Conv3×3 (stem), MBConv6 k5×5, FusedMB4 k3×3 (Fused-MBConv), Conv1×1 (head), Pool + FC."""
    if row.kind == "stage":
        # "FusedMB" is Fused-MBConv, shortened so the table fits 80 columns; the V2 paper calls a plain
        # conv stage Fused-MBConv1 (a Fused-MBConv that does not expand).
        kind = "FusedMB" if row.block_type in ("fused", "conv") else "MBConv"
        return f"{kind}{row.expand_ratio} k{row.kernel_size}×{row.kernel_size}"
    if row.kind == "classifier":
        return "Pool + FC"
    return f"Conv{row.kernel_size}×{row.kernel_size}"


def human(n: float) -> str:
    """3-significant-digit SI form (5.29M, 386M, 37.7B) for table cells; JSON keeps exact integers."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.3g}{suffix}" if value < 1000 else f"{value:,.0f}{suffix}"
    return f"{n:g}"


def describe(config: EfficientNetConfig, name: str, cost: NetworkCost) -> dict[str, Any]:
    """The JSON form of ``show``: coefficients, one record per table row, totals."""
    labels = int(config.num_labels)
    return {
        "name": name,
        "image_size": cost.image_size,
        "native_image_size": config.image_size,
        "width_coefficient": config.width_coefficient,
        "depth_coefficient": config.depth_coefficient,
        "rows": [
            {
                "kind": r.kind,
                "stage": r.stage,
                "operator": operator(r),
                "block_type": r.block_type,
                "kernel_size": r.kernel_size,
                "stride": r.stride,
                "expand_ratio": r.expand_ratio,
                "in_channels": r.in_channels,
                "out_channels": r.out_channels,
                "repeats": r.repeats,
                "input_size": r.input_size,
                "output_size": r.output_size,
                "params": r.params,
                "macs": r.macs,
            }
            for r in cost.rows
        ],
        "totals": {
            "params": cost.params,
            "macs": cost.macs,
            "flops": cost.flops,
            "blocks": cost.blocks,
            "hidden_dim": config.head_channels,
            "num_labels": labels,
            "padding_mode": config.padding_mode,
            "hidden_act": config.hidden_act,
            "squeeze_excite": config.use_squeeze_excite,
        },
    }


def print_stage_table(console: Console, config: EfficientNetConfig, name: str, cost: NetworkCost) -> None:
    """The stage table and the totals under it, as Rich renders them."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    size = cost.image_size
    native = "" if size == config.image_size else f" (native {config.image_size})"
    # Title and caption are printed as lines of their own: as table title/caption Rich would wrap
    # them to the table's width.
    console.print(f"{escape(name)}: width {config.width_coefficient:g}, depth {config.depth_coefficient:g}, "
                  f"input {size}×{size}{native}", style="bold")
    # Right padding only: with the invisible column rule that leaves two spaces between columns,
    # which keeps the ten columns inside an 80-column terminal.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("stage")
    table.add_column("operator")
    for header in ("stride", "expand", "in", "out", "blocks", "output", "params", "MACs"):
        table.add_column(header, justify="right")
    for r in cost.rows:
        table.add_row(
            str(r.stage) if r.stage is not None else r.kind.replace("classifier", "fc"),
            operator(r),
            "-" if r.stride is None else str(r.stride),
            "-" if r.expand_ratio is None else str(r.expand_ratio),
            str(r.in_channels),
            str(r.out_channels),
            str(r.repeats),
            f"{r.output_size}×{r.output_size}",
            human(r.params),
            human(r.macs),
        )
    console.print(table)
    num_stages = sum(1 for r in cost.rows if r.kind == "stage")
    console.print(STAGE_CAPTION.format(n=num_stages))
    if isinstance(config, EfficientNetV2Config):
        console.print(FUSED_CAPTION)
    console.print()
    labels = int(config.num_labels)
    print_rows(console, [
        ("parameters", f"{cost.params:,} ({human(cost.params)}; {labels}-class classifier included)"),
        ("MACs", f"{cost.macs:,} ({human(cost.macs)}) at {size}×{size}; FLOPs = 2 × MACs = {human(cost.flops)}"),
        ("blocks", f"{cost.blocks} MBConv" if not isinstance(config, EfficientNetV2Config)
         else f"{cost.blocks} (Fused-MBConv and MBConv)"),
        ("head width", f"{config.head_channels} (hidden_dim)"),
        ("padding", config.padding_mode),
        ("activation", config.hidden_act),
        ("squeeze-excite", "yes" if config.use_squeeze_excite else "no"),
    ])


def print_scaling(console: Console, phi: float, config: EfficientNetConfig) -> None:
    """The coefficients compound scaling gave for ``phi``, beside the unrounded values they came from."""
    print_rows(console, [
        ("φ", f"{phi:g}", ""),
        ("depth_coefficient", f"{config.depth_coefficient:g}", f"α^φ = {ALPHA}^{phi:g} = {ALPHA**phi:.4f}"),
        ("width_coefficient", f"{config.width_coefficient:g}", f"β^φ = {BETA}^{phi:g} = {BETA**phi:.4f}"),
        ("image_size", str(config.image_size), f"224·γ^φ = 224·{GAMMA}^{phi:g} = {224 * GAMMA**phi:.1f}, to a multiple of 8"),
        ("dropout_rate", f"{config.dropout_rate:g}", "0.2 + 0.05·φ, at most 0.5"),
    ], right=(1,))


def print_rows(console: Console, rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> None:
    """Aligned columns, two spaces apart, the first in bold, without the trailing spaces a Rich grid pads with."""
    from rich.markup import escape

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        line = "  ".join(cells).rstrip()
        console.print(f"[bold]{escape(line[:widths[0]])}[/]{escape(line[widths[0]:])}", highlight=False,
                      soft_wrap=True)


def write_json_atomic(target: Path, text: str) -> None:
    """Write ``text`` through the output layer: atomic, and with the umask's mode."""
    from effnet_cli.output import write_text

    write_text(target, text)


def output_path(output: Path) -> Path:
    """Where ``-o`` points: a file, or config.json inside an existing directory."""
    target = output / "config.json" if output.is_dir() else output
    if not target.parent.is_dir():
        raise InputError(f"Cannot write {target}: directory {target.parent} does not exist.")
    return target


# ----------------------------------------------------------------- commands
@app.command("list", cls=Command)
def list_variants(format: FormatOpt = Format.table) -> None:
    """List every published variant: resolution, scaling, parameters, MACs, ImageNet top-1.

    Examples:

      effnet config list

      effnet config list --format json | jq '.[] | select(.params < 1e7) | .name'

    Parameters include the 1000-class classifier. MACs are multiply-adds at the
    native resolution, the unit the paper reports as FLOPs (B0: 0.39 B).
    Top-1 is as published (paper for B0-B7, TF-Lite README for lite0-lite4).
    EfficientNetV2 (v2-b0 … v2-xl) is listed at its evaluation resolution.
    """
    from rich import box
    from rich.table import Table

    records = []
    for name in ALL_VARIANTS:
        config = variant_config(name)
        cost = network_cost(config)
        v1 = VARIANTS.get(name)
        records.append({
            "name": name,
            "family": config.model_type,
            "image_size": config.image_size,
            "width_coefficient": config.width_coefficient,
            "depth_coefficient": config.depth_coefficient,
            "params": cost.params,
            "macs": cost.macs,
            "top1": v1.top1 if v1 else None,  # V2's weights are timm's ports; no one published figure to quote
            "lite": bool(v1 and v1.lite),
        })
    if format is Format.json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("variant")
    for header in ("resolution", "width", "depth", "params", "MACs", "top-1"):
        table.add_column(header, justify="right")
    for r in records:
        table.add_row(r["name"], f"{r['image_size']}×{r['image_size']}", f"{r['width_coefficient']:g}",
                      f"{r['depth_coefficient']:g}", f"{r['params']:,}", human(r["macs"]),
                      "-" if r["top1"] is None else f"{r['top1']:.1f}%")
    console = stdout_console()
    console.print(table)
    console.print(MACS_NOTE)


@app.command("show", cls=Command)
def show(
    source: Annotated[str, typer.Argument(
        help="A variant (b0-b7, lite0-lite4, v2-b0-v2-xl), a model directory, or a config.json.",
        show_default=False)],
    image_size: ImageSizeOpt = None,
    format: FormatOpt = Format.table,
) -> None:
    """Show the stage table after compound scaling: operators, widths, repeats, resolutions, cost.

    Examples:

      effnet config show b3

      effnet config show b0 --image-size 320

      effnet config show ./my-model/ --format json

    Rows: the stem, MBConv stages 1..7 (Fused-MBConv and MBConv for EfficientNetV2;
    numbered as `effnet embed --features stage:N`), the head conv and the classifier. "output" is the side of the
    feature map each row leaves, at the input size given (native by default).
    MACs are multiply-adds (the paper's "FLOPs"); FLOPs = 2 × MACs.
    """
    config, name = load_config(source)
    cost = checked_cost(config, image_size)
    if format is Format.json:
        sys.stdout.write(json.dumps(describe(config, name, cost), indent=2) + "\n")
        return
    print_stage_table(stdout_console(), config, name, cost)


@app.command("save", cls=Command)
def save(
    variant: Annotated[Optional[str], typer.Argument(
        help="A published variant (b0-b7, lite0-lite4, v2-b0-v2-xl). Omit it when giving --phi.",
        show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="config.json to write (or an existing directory to write it into).",
        show_default=False)] = None,
    phi: Annotated[Optional[float], typer.Option(
        "--phi", min=0.0, help="Derive a new variant by compound scaling: depth 1.2^φ, width 1.1^φ, "
                               "resolution 224·1.15^φ.", show_default=False)] = None,
) -> None:
    """Write a config.json that Hugging Face transformers reads, for a variant or a new φ.

    Examples:

      effnet config save b3 -o b3/config.json

      effnet config save --phi 2.5 -o b2.5.json

    With --phi the scaled coefficients and the stage table are printed. The
    paper hand-rounded B1-B7 from these rules, so --phi 3 is close to b3 but not
    the same network.
    """
    if (variant is None) == (phi is None):
        raise InputError("Give exactly one of VARIANT or --phi (e.g. `effnet config save b0 -o config.json`).")
    if phi is not None and not math.isfinite(phi):  # click lets nan/inf through its range check
        raise InputError(f"--phi must be a finite number, got {phi}.")
    if output is None:
        raise InputError("Missing -o/--output: where to write config.json.")
    target = output_path(output)
    if phi is not None:
        config = EfficientNetConfig.from_compound_scaling(phi)
        name = f"phi={phi:g}"
    else:
        config, name = load_variant(variant)
    write_json_atomic(target, config.to_json_string())

    console = stdout_console()
    if phi is not None:
        print_scaling(console, phi, config)
        console.print()
        print_stage_table(console, config, name, network_cost(config))
        console.print()
    if isinstance(config, EfficientNetV2Config):
        error_line(f"warning: transformers has no EfficientNetV2; only effnet builds {name} from this config.")
    elif config.fix_stem_and_head or not config.use_squeeze_excite or config.padding_mode != "fixed":
        # Lite configs use effnet's extension fields, which transformers ignores: it would build a B-style net.
        error_line(f"warning: {name} uses fields transformers ignores (use_squeeze_excite, fix_stem_and_head, "
                   "padding_mode); only effnet builds this network from it.")
    print(f"wrote {target}", file=sys.stderr)

