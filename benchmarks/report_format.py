"""The cells of the benchmark report: number formats, markdown tables, labels and lookups in the results.

Every table and sentence of docs/benchmarks.md formats its numbers through these, so
that a dash stands for a missing or failed measurement everywhere alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

LIB_LABELS = {
    "effnet": "effnet `optimize(keep_freed_memory=False)` (glibc's default allocator behaviour)",
    "effnet-engine": "effnet `optimize()` — what `effnet classify --backend torch` runs",
    "effnet-engine-bf16": "effnet `optimize(dtype=bfloat16)`",
    "effnet-auto": "effnet's default backend: `Engine(backend=\"auto\", batch_size=N)`, as `effnet classify` runs it",
    "effnet-auto-bf16": "effnet's default backend in bfloat16: `Engine(backend=\"auto\", dtype=\"bfloat16\", "
                        "batch_size=N)`",
    "onnxruntime": "ONNX Runtime used directly (ORT_ENABLE_ALL, threads = cores)",
    "openvino": "OpenVINO used directly (float32, THROUGHPUT/LATENCY hint, async requests)",
    "openvino-bf16": "OpenVINO used directly, bfloat16 inference precision",
    "torchvision": "torchvision `efficientnet_*`, channels-last, eager",
    "timm": "timm, channels-last, eager",
    "transformers": "transformers `EfficientNetForImageClassification`",
}
E2E_LABELS = {
    "effnet": "`effnet classify` (the CLI, jsonl to a pipe; default backend `auto`)",
    "effnet-torch": "`effnet classify --backend torch`",
    "effnet-onnxruntime": "`effnet classify --backend onnxruntime`",
    "effnet-openvino": "`effnet classify --backend openvino`",
    "onnxruntime": "ONNX Runtime used directly (effnet's processor + DataLoader)",
    "openvino": "OpenVINO used directly (effnet's processor + DataLoader)",
    "transformers": "transformers `pipeline(\"image-classification\")`, `num_workers=2`",
    "timm": "timm (`resolve_data_config` + `create_transform` + DataLoader)",
    "torchvision": "torchvision (weights' `transforms()` + DataLoader)",
}
TIMM_ARCH = {"b0": "efficientnet_b0", "b7": "tf_efficientnet_b7"}
# The `effnet classify` rows, one per `--backend` (the default first).
CLI_LIBS = ("effnet", "effnet-torch", "effnet-onnxruntime", "effnet-openvino")


def fmt(x: float | None, digits: int = 1) -> str:
    """``x`` to ``digits`` decimals; a dash for a missing or failed (NaN) measurement."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def times(a: float | None, b: float | None) -> str:
    """``a / b`` as ``1.23×``; a dash when either is missing, zero or NaN."""
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}×"


def pct(a: float | None, b: float | None) -> str:
    """``a / b`` as a whole percentage; a dash when either is missing, zero or NaN."""
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{100 * a / b:.0f}%"


def check(ok: bool | None) -> str:
    """The verdict cell of the targets table."""
    return "–" if ok is None else ("**met**" if ok else "**not met**")


def table(titles: Sequence[str], align: str, rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table: one ``align`` letter per column, ``l`` (left) or ``r`` (right)."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(titles), line("---:" if a == "r" else "---" for a in align), *(line(row) for row in rows)]


def rounds(r: dict[str, Any]) -> str:
    """A ratio's median with its per-round values, as the targets and ratios tables show it."""
    runs = r["per_round"]
    return f"{r['median']:.2f}×" + (f" (median of {len(runs)} rounds: {', '.join(f'{x:.2f}' for x in runs)})"
                                    if len(runs) > 1 else " (one round)")


def ratio_row(ratios: list[dict[str, Any]], name: str, **where: Any) -> dict[str, Any] | None:
    """The measured ratio called ``name`` whose fields match ``where`` (None when absent or not measured)."""
    for r in ratios:
        if r["name"] == name and all(r.get(k) == v for k, v in where.items()) and r.get("median") is not None:
            return r
    return None


def forward_lookup(rows: list[dict[str, Any]], variant: str, batch: int, lib: str) -> float | None:
    """images/s of ``lib``'s model forward for ``variant`` at ``batch``."""
    for row in rows:
        if row["variant"] == variant and row["batch"] == batch and row["lib"] == lib:
            return row["images_per_s"]
    return None


def e2e_lookup(rows: list[dict[str, Any]], variant: str, lib: str) -> float | None:
    """Steady-state images/s of ``lib`` end to end for ``variant``."""
    for row in rows:
        if row["variant"] == variant and row["lib"] == lib:
            return row["steady_images_per_s"]
    return None


def e2e_rss(e2e: list[dict[str, Any]], lib: str) -> float | None:
    """Peak RSS (MB) of ``lib``'s main process end to end with b0."""
    for row in e2e:
        if row["variant"] == "b0" and row["lib"] == lib:
            return row["peak_rss_mb"]
    return None
