"""Export a loaded model to ONNX or OpenVINO, so that other runtimes can run it.

    effnet export lite0 -o lite0-onnx/ --format onnx --verify

An export is a directory: the model file (``model.onnx``, or ``model.xml`` +
``model.bin`` for OpenVINO), the model's ``config.json`` (labels) and its
``preprocessor_config.json``, so whoever runs it preprocesses exactly as effnet
does. The graph takes float32 ``pixel_values`` (N×3×H×W, the processor's
output) and returns up to three outputs:

* ``logits``: the classifier's logits (models with a classification head);
* ``features``: the last feature map averaged over H×W (``effnet embed``'s rows);
* ``features_max``: the same feature map's maximum over H×W (``--pool max``).

The plain model is exported, not :func:`effnet_cli.runtime.fused`'s copy: its fused
oneDNN op has no ONNX equivalent, and the runtimes fold batch norm and fuse
activations themselves. The dynamo exporter folds TF-"same" padding into the
convolutions' own pads, and pooling is a mean over H×W, so the graph has no
shape-dependent padding ops.

Nothing here imports onnxruntime or openvino until a function needs them.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effnet_cli.errors import InputError
from effnet_cli.output import EXPORT_DIR_FILES, owned_by, publish_dir, temp_dir, write_text, writing
from effnet_cli.output.targets import check_dir
from effnet_cli.records.pathtext import display_path
from effnet_cli.runtime.runners import FILE_OF, keep_float32, model_file, open_runner, require_runtime

__all__ = [
    "DTYPES",
    "FORMATS",
    "OUTPUT_NAMES",
    "ExportResult",
    "VerifyReport",
    "export_model",
    "model_file",
    "verify_export",
]

FORMATS = ("onnx", "openvino")
DTYPES = ("float32", "float16", "bfloat16")
OUTPUT_NAMES = ("logits", "features", "features_max")
INPUT_NAME = "pixel_values"
# Opset 18 is the oldest the dynamo exporter writes natively (no version conversion step), and
# ONNX Runtime has run it since 1.14.
OPSET = 18
ONNX_NAME = FILE_OF["onnx"]
OPENVINO_NAME = FILE_OF["openvino"]


class _ExportGraph(nn.Module):
    """The plain model with the export's fixed outputs: logits (if any), mean- and max-pooled features."""

    def __init__(self, model: nn.Module, half: bool) -> None:
        super().__init__()
        self.model = model
        self.half = half
        self.has_head = has_classifier(model)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = pixel_values.half() if self.half else pixel_values  # the input stays float32 for the caller
        base = getattr(self.model, "efficientnet", self.model)
        fmap = base(x, return_dict=True).last_hidden_state  # N×hidden_dim×h×w
        mean, peak = fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))
        outs = (mean, peak)
        if self.has_head:
            outs = (self.model.classifier(mean if self.model.config.pooling_type != "max" else peak), *outs)
        return tuple(o.float() for o in outs)


def has_classifier(model: nn.Module) -> bool:
    """True for a model with a classification head (its export has a ``logits`` output)."""
    return isinstance(getattr(model, "classifier", None), nn.Linear)


def output_names(model: nn.Module) -> list[str]:
    """The export's outputs for ``model``, in graph order."""
    return list(OUTPUT_NAMES if has_classifier(model) else OUTPUT_NAMES[1:])


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``--image-size``: ``N`` or ``HxW`` -> (height, width); None stays None."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) >= 8 for p in parts):
        h, w = int(parts[0]), int(parts[-1])
        return h, w
    raise InputError(f"--image-size must be N or HxW with sides of at least 8 pixels, got {text!r}.")


def processor_for_size(processor: Any, size: tuple[int, int] | None) -> Any:
    """The processor whose output is ``size`` (height, width); unchanged when None.

    With a centre crop the crop becomes ``size`` and the resize scales with it, so
    the same share of the image is kept; without one the resize target becomes ``size``.
    """
    if size is None:
        return processor
    h, w = size
    if processor.do_center_crop:
        scale = h / processor.crop_size["height"]
        resize = {k: max(1, round(v * scale)) for k, v in processor.size.items()}
        return processor.replace(crop_size={"height": h, "width": w}, size=resize)
    return processor.replace(size={"height": h, "width": w}, do_resize=True)


def fixed_input_size(processor: Any) -> tuple[int, int]:
    """(height, width) every preprocessed image has; an InputError when it depends on the image."""
    size = processor.input_size
    if size is None:
        raise InputError("This model's preprocessing keeps each image's aspect ratio, so inputs have no fixed "
                         "size; give --image-size HxW.")
    return size


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    directory: Path
    format: str
    dtype: str
    image_size: tuple[int, int]
    batch: int | None  # None: any batch size
    outputs: list[str]
    files: list[Path] = field(default_factory=list)

    @property
    def model_path(self) -> Path:
        """The model file (model.onnx or model.xml)."""
        return model_file(self.directory, self.format)


def _check_dtype(fmt: str, dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if fmt == "onnx" and dtype == "bfloat16":
        raise InputError("ONNX Runtime has no bfloat16 convolutions on the CPU; export float32 (or float16), "
                         "or use --format openvino, which computes in bfloat16 where the CPU supports it.")


def _write_onnx(model: nn.Module, path: Path, *, image_size: tuple[int, int], batch: int | None, dtype: str) -> None:
    """Export ``model`` (plain, float32) to ONNX at ``path`` with the dynamo exporter."""
    import copy

    for needed in ("onnx", "onnxscript"):  # torch's exporter imports them only when called
        require_runtime(needed)
    graph = _ExportGraph(copy.deepcopy(model).float().eval(), half=False)
    if dtype == "float16":
        graph = _ExportGraph(copy.deepcopy(model).half().eval(), half=True)
    example = torch.zeros(batch or 2, 3, *image_size)
    dynamic = None if batch else {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}}
    with warnings.catch_warnings():
        # The exporter warns about its own internals (deprecations, opset choices); none is actionable here.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME],
                          output_names=output_names(model), opset_version=OPSET, dynamo=True,
                          dynamic_shapes=dynamic, verbose=False, external_data=False)
    _pool_squeeze_excite_globally(path)


def _pool_squeeze_excite_globally(path: Path) -> int:
    """Rewrite the squeeze-and-excitation means of the ONNX file at ``path`` as GlobalAveragePool; how many.

    The exporter writes ``x.mean((2, 3), keepdim=True)`` as ReduceMean, which ONNX Runtime's CPU
    provider runs in plain NCHW: each one costs two reorders of the block's tensor out of and back into
    its blocked layout (NCHWc). GlobalAveragePool is the same mean and has a blocked kernel: b0 ran
    2-2.5% faster at batch 1 and 1-3% at batch 16 for it (ONNX Runtime 1.32, 2 cores, processes of
    each graph timed in turn).
    Only means over both spatial axes of a 4-d tensor that keep them are rewritten; the pooled
    ``features`` output (which drops them) stays a ReduceMean.
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(proto)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.graph.value_info, *inferred.graph.input)
            if v.type.tensor_type.HasField("shape")}
    # The axes of the means only: turning every weight into a list would cost seconds.
    wanted = {node.input[1] for node in proto.graph.node if node.op_type == "ReduceMean" and len(node.input) == 2}
    constants = {t.name: numpy_helper.to_array(t).tolist() for t in proto.graph.initializer if t.name in wanted}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).tolist()
    count = 0
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "ReduceMean" or len(node.input) != 2 or rank.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = constants.get(node.input[1])
        if attrs.get("keepdims", 1) != 1 or not isinstance(axes, list) or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        proto.graph.node[i].CopyFrom(pool)
        count += 1
    if count:
        onnx.save(proto, str(path))
    return count


def _write_openvino(onnx_path: Path, xml_path: Path, dtype: str) -> None:
    """Convert an exported ONNX file to OpenVINO IR (model.xml + model.bin)."""
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_path))
    if dtype == "bfloat16":
        # OpenVINO keeps weights in float32 and computes in bfloat16 when compiled with this hint;
        # recorded in the IR, so `compile_model` on any machine with bf16 support picks it up.
        ov_model.set_rt_info("bf16", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=dtype == "float16")


def write_export(model: nn.Module, processor: Any, directory: Path, *, fmt: str, dtype: str = "float32",
                 batch: int | None = None, onnx_source: Path | None = None) -> ExportResult:
    """Write an export of ``model`` into the existing, empty ``directory`` (no atomicity: see :func:`export_model`).

    ``onnx_source``: for OpenVINO, a float32 ONNX export of the same model and batch to convert,
    instead of exporting one again.
    """
    _check_dtype(fmt, dtype)
    image_size = fixed_input_size(processor)
    onnx_path = directory / ONNX_NAME
    if fmt == "onnx":
        _write_onnx(model, onnx_path, image_size=image_size, batch=batch, dtype=dtype)
    elif onnx_source is not None:
        _write_openvino(onnx_source, directory / OPENVINO_NAME, dtype)
    else:
        scratch = temp_dir(directory / ONNX_NAME)
        try:
            # OpenVINO reads the float32 ONNX graph; its own dtype handling decides the precision.
            _write_onnx(model, scratch / ONNX_NAME, image_size=image_size, batch=batch, dtype="float32")
            _write_openvino(scratch / ONNX_NAME, directory / OPENVINO_NAME, dtype)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    from effnet_cli.core.checkpoint import config_json

    write_text(directory / "config.json", config_json(model))
    if fmt == "openvino" and dtype == "bfloat16":
        # The stem and first stage marked float32 in the IR itself, so OpenVINO used directly keeps them
        # too (keep_float32 reads the config.json just written).
        xml_path = directory / OPENVINO_NAME
        write_text(xml_path, keep_float32(xml_path))
    processor.to_json_file(directory / "preprocessor_config.json")
    return ExportResult(directory=directory, format=fmt, dtype=dtype, image_size=image_size, batch=batch,
                        outputs=output_names(model), files=sorted(directory.iterdir()))


def export_model(model: nn.Module, processor: Any, out: str | Path, *, fmt: str = "onnx", dtype: str = "float32",
                 batch: int | None = None, image_size: tuple[int, int] | None = None,
                 overwrite: bool = False) -> ExportResult:
    """Export ``model`` with its preprocessing to the new directory ``out``.

    ``fmt`` is "onnx" or "openvino"; ``batch`` fixes the batch size (None: any);
    ``image_size`` (height, width) overrides the processor's input size. The
    directory appears complete or not at all: everything is written into a
    temporary directory beside it, which is then renamed. An existing ``out``
    that is not empty is refused; with ``overwrite``, one that holds an earlier
    export's files and nothing else is replaced whole (readers see the old export
    or the new one, never a mix).
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    _check_dtype(fmt, dtype)
    if batch is not None and batch < 1:
        raise InputError(f"--batch must be 'dynamic' or a positive number, got {batch}.")
    if fmt == "openvino":
        require_runtime("openvino")
    out = Path(out)
    # Only an earlier export may be replaced, and only when asked: never a directory with anyone else's files.
    check_dir(out, "-o", overwrite=overwrite, own=owned_by(out, EXPORT_DIR_FILES))
    processor = processor_for_size(processor, image_size)
    fixed_input_size(processor)
    tmp = temp_dir(out)  # the umask's mode; publish_dir fsyncs the files and renames the directory
    try:
        with writing(out, restate=True):  # a full disk while the exporter writes: one line naming -o, nothing left
            result = write_export(model, processor, tmp, fmt=fmt, dtype=dtype, batch=batch)
        if not publish_dir(tmp, out, replace_own=EXPORT_DIR_FILES if overwrite else None):
            raise InputError(f"{display_path(out)} was filled by another program meanwhile; it was left as it is.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.directory = out
    result.files = sorted(out.iterdir())
    return result


@dataclass
class VerifyReport:
    """How far an export's outputs are from the PyTorch model's on the same pixel values."""

    images: int
    max_abs: dict[str, float]  # per output: largest absolute difference
    max_rel: dict[str, float]  # per output: largest difference relative to the output's largest magnitude
    top1_equal: int | None  # images whose top-1 class agrees (models with logits)


def verify_export(result: ExportResult, model: nn.Module, pixel_values: torch.Tensor) -> VerifyReport:
    """Run the export in its own runtime on ``pixel_values`` and compare with the plain PyTorch model."""
    runner = open_runner(result.model_path, result.format, dtype=result.dtype)
    x = pixel_values.float()
    if result.batch is not None:
        chunks = [x[i:i + result.batch] for i in range(0, len(x), result.batch)]
        if len(chunks[-1]) < result.batch:  # a fixed-batch export takes exactly that many: pad the last chunk
            n = len(chunks[-1])
            chunks[-1] = torch.cat([chunks[-1], chunks[-1][:1].expand(result.batch - n, -1, -1, -1)])
        got_chunks = [runner.run(c.numpy(), result.outputs) for c in chunks]
        got = {name: torch.cat([torch.from_numpy(g[name]) for g in got_chunks])[: len(x)] for name in result.outputs}
    else:
        got = {k: torch.from_numpy(v) for k, v in runner.run(x.numpy(), result.outputs).items()}
    with torch.inference_mode():
        graph = _ExportGraph(model.float().eval(), half=False)
        want = dict(zip(result.outputs, graph(x)))
    max_abs, max_rel = {}, {}
    for name in result.outputs:
        diff = (got[name].float() - want[name]).abs().max().item()
        max_abs[name] = diff
        max_rel[name] = diff / max(want[name].abs().max().item(), 1e-12)
    top1 = None
    if "logits" in want:
        top1 = int((got["logits"].argmax(-1) == want["logits"].argmax(-1)).sum())
    return VerifyReport(images=len(x), max_abs=max_abs, max_rel=max_rel, top1_equal=top1)


def sample_pixels(processor: Any, paths: Sequence[str | Path]) -> torch.Tensor:
    """The processor's pixel values for ``paths`` (exact decoding), stacked."""
    from effnet_cli.data.decode import open_image

    return torch.stack([processor.preprocess_pil(open_image(p)) for p in paths])
