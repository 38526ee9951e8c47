"""Options shared by several commands, as ``Annotated`` aliases: one definition each."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from effnet_cli.core.config import VARIANTS
from effnet_cli.weights.variants_v2 import V2_VARIANTS

DEFAULT_VARIANT = "lite0"  # the bundled ImageNet weights: works offline, no download

# Only the variants whose weights can be had: b0-b7 from the hub and the bundled lite0. lite1-lite4 have
# no published weights in this format (convert timm's, then --model DIR), so offering them would be a trap.
# EfficientNetV2 (v2-b0 … v2-xl) resolves to timm's hub weights, converted on first use.
LOADABLE = [name for name, v in VARIANTS.items() if not v.lite or name == DEFAULT_VARIANT] + list(V2_VARIANTS)
Variant = Enum("Variant", {name: name for name in LOADABLE}, type=str)  # type: ignore[misc]


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Pool(str, Enum):
    mean = "mean"
    max = "max"


class BackendKind(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


class EngineKind(str, Enum):
    local = "local"
    ray = "ray"


MODEL_PANEL = "Model"
INPUT_PANEL = "Inputs"
RUN_PANEL = "Run"
SCALE_PANEL = "Sharded output and scale"

Inputs = Annotated[list[str], typer.Argument(
    help="Image files, directories (recursed), globs, or - to read paths from stdin.", show_default=False,
    metavar="IMAGE...")]
Null = Annotated[bool, typer.Option("--null", "-0", help="With -, paths on stdin are NUL-separated (find -print0).",
                                    rich_help_panel=INPUT_PANEL)]
MaxPixels = Annotated[Optional[int], typer.Option(
    "--max-pixels", help="Refuse images with more pixels than this (decompression bombs). [default: 89478485]",
    rich_help_panel=INPUT_PANEL, show_default=False)]
DecodeTimeout = Annotated[Optional[float], typer.Option(
    "--decode-timeout", metavar="SECONDS", rich_help_panel=INPUT_PANEL, show_default=False,
    help="Give up on an input whose read and decode take longer than this (a hung network file, a runaway "
         "decode): it gets an error record and the run goes on. 0: no limit. [default: 300]")]
VariantOpt = Annotated[Optional[Variant], typer.Option(
    "--variant", help=f"Published variant. b0-b7 come from the Hugging Face hub; lite0 ships with effnet "
                      f"(for lite1-lite4, convert timm's weights and use --model); v2-b0 … v2-xl are timm's "
                      f"EfficientNetV2 weights from the hub. [default: {DEFAULT_VARIANT}]", rich_help_panel=MODEL_PANEL,
    show_default=False,
    case_sensitive=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Hub repository id (timm/<arch>.<tag> included) or local directory (config.json + "
                          "model.safetensors).",
    rich_help_panel=MODEL_PANEL)]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit to pin.",
                                                 rich_help_panel=MODEL_PANEL)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps (auto picks an accelerator).",
                                     rich_help_panel=RUN_PANEL)]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Compute dtype (float16 computes in float32 on CPU).",
                                         rich_help_panel=RUN_PANEL)]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.",
                                        rich_help_panel=RUN_PANEL)]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", "-j", min=0, help="Decode processes (0 decodes in the main process). [default: cores, at most 4]",
    rich_help_panel=RUN_PANEL, show_default=False)]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the model (slow start, faster after).",
                                       rich_help_panel=RUN_PANEL)]
ExactDecode = Annotated[Optional[bool], typer.Option(
    "--exact-decode/--fast-decode",
    help="Exact: decode JPEGs at full size, the pixels every other library gives. Fast: decode large JPEGs at "
         "a reduced size (still 1.5× the model's input), several times faster; scores differ slightly. "
         "[default: fast for classify, exact for embed]", rich_help_panel=RUN_PANEL, show_default=False)]
FullDecode = Annotated[bool, typer.Option(  # the old spelling of --exact-decode on classify
    "--full-decode", hidden=True, help="Deprecated spelling of --exact-decode.", rich_help_panel=RUN_PANEL)]
BackendOpt = Annotated[BackendKind, typer.Option(
    "--backend", envvar="EFFNET_BACKEND",
    help="Where the model runs. auto: the fastest of torch, ONNX Runtime and OpenVINO for this model, batch size "
         "and CPU, measured once (on the first run of 1,000 or more inputs) and remembered; until then, and on a "
         "GPU, torch. onnxruntime/openvino export the model once into effnet's cache.",
    rich_help_panel=RUN_PANEL)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-file error lines.",
                                     rich_help_panel=RUN_PANEL)]
Progress = Annotated[Optional[bool], typer.Option(
    "--progress/--no-progress", help="Progress bar on stderr. [default: when stderr is a terminal]",
    rich_help_panel=RUN_PANEL, show_default=False)]

# Sharded outputs, partitions, several devices, Ray (see docs/scaling.md).
OutputDir = Annotated[Optional[Path], typer.Option(
    "--output-dir", help="Write fixed-size shard files (with completion markers) to this directory.",
    rich_help_panel=SCALE_PANEL, show_default=False)]
ShardSize = Annotated[Optional[int], typer.Option(
    "--shard-size", min=1, help="Inputs per shard file, with --output-dir. [default: 10000]",
    rich_help_panel=SCALE_PANEL, show_default=False)]
MetaFormat = Annotated[Optional[str], typer.Option(
    "--meta-format", help="Metadata of embed shards: parquet (embedding-reader's layout) or jsonl. Recorded in every marker, "
                          "so runs sharing a directory must agree. [default: parquet]",
    rich_help_panel=SCALE_PANEL, show_default=False)]
Shard = Annotated[Optional[str], typer.Option(
    "--shard", help="Process only partition I of N: the inputs whose position in the input list is I mod N "
                    "(e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT).",
    rich_help_panel=SCALE_PANEL, show_default=False)]
Devices = Annotated[Optional[str], typer.Option(
    "--devices", help="One worker process per device, each on its own partition: cuda:0,cuda:1, all (every GPU), "
                      "or cpu:N (N CPU workers). Needs --output-dir.",
    rich_help_panel=SCALE_PANEL, show_default=False)]
EngineOpt = Annotated[EngineKind, typer.Option(
    "--engine", help="local, or ray: Ray Data on the cluster at --ray-address / $RAY_ADDRESS, else a local Ray "
                     "(needs effnet-cli[ray] and --output-dir).", rich_help_panel=SCALE_PANEL)]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Ray cluster to join with --engine ray. [default: $RAY_ADDRESS, else start a local Ray]",
    rich_help_panel=SCALE_PANEL, show_default=False)]
RayActors = Annotated[Optional[int], typer.Option(
    "--ray-actors", min=1, help="Model actors with --engine ray. [default: one per GPU in the cluster, "
                                "else half its CPUs]", rich_help_panel=SCALE_PANEL, show_default=False)]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run of the same command instead of starting over.")]
Report = Annotated[Optional[Path], typer.Option(
    "--report", metavar="PAGE.html", show_default=False,
    help="Also write a self-contained HTML page of the results: thumbnails, labels and scores, no network needed "
         "(needs Jinja2). The records are written as without it.")]


def _new_page(path: Optional[Path]) -> Optional[Path]:
    """A ``--report`` page that must not exist yet, checked as the option is parsed (before any work)."""
    from effnet_cli.report.page import check_page

    return check_page(path)


NewReport = Annotated[Optional[Path], typer.Option(
    "--report", metavar="PAGE.html", show_default=False, callback=_new_page,
    help="Also write a self-contained HTML page of the results (thumbnails embedded, no network needed; needs "
         "Jinja2). The records are written as without it.")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing output (only files effnet wrote).")]
