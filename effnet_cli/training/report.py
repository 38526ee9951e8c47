"""Evaluation numbers and pictures of a fine-tuning run: top-1/top-5, per-class precision/recall, confusion.

Pure functions over logits and targets; the pictures need matplotlib (the
optional ``plot`` extra) and are skipped without it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch


def evaluate(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Top-1, top-5, loss, per-class precision and recall, and the confusion matrix (rows: true class)."""
    n_classes = len(classes)
    if len(targets) == 0:
        return {"images": 0}
    k = min(5, n_classes)
    topk = logits.topk(k, dim=1).indices
    pred = topk[:, 0]
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    confusion.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
    per_class = []
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i].sum())
        per_class.append({"label": name, "images": actual,
                          "precision": tp / predicted if predicted else None,
                          "recall": tp / actual if actual else None})
    return {
        "images": int(len(targets)),
        "loss": float(torch.nn.functional.cross_entropy(logits.float(), targets)),
        "top1": float((pred == targets).float().mean()),
        "top5": float((topk == targets[:, None]).any(dim=1).float().mean()),
        "top5_k": k,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_curves(history: Sequence[dict[str, Any]]) -> bytes | None:
    """PNG of training loss and accuracy (and validation top-1) per epoch; None without matplotlib."""
    if not _have_matplotlib() or not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.5))
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    if any(r.get("val_loss") is not None for r in history):
        loss_ax.plot(epochs, [r.get("val_loss") for r in history], marker="o", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [r["train_accuracy"] for r in history], marker="o", label="train")
    if any(r.get("val_top1") is not None for r in history):
        acc_ax.plot(epochs, [r.get("val_top1") for r in history], marker="o", label="validation top-1")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    acc_ax.legend()
    return _png(fig)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes | None:
    """PNG of the confusion matrix with counts in the cells; None without matplotlib."""
    if not _have_matplotlib() or not confusion:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = len(classes)
    size = min(12, 2 + 0.5 * n)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="Confusion matrix")
    ax.set_xticklabels(classes, rotation=90)
    ax.set_yticklabels(classes)
    peak = max((max(row) for row in confusion), default=0)
    if n <= 30:
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center",
                            color="white" if count > peak / 2 else "black", fontsize=8)
    return _png(fig)
