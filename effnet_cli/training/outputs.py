"""Scoring a fine-tuning run on its validation images, and writing the finished model and report."""

from __future__ import annotations

import json
from typing import Any

import torch

from effnet_cli.errors import InputError
from effnet_cli.records.pathtext import path_fields
from effnet_cli.report.finetune import finetune_page
from effnet_cli.training.dataset import Samples
from effnet_cli.training.inputs import open_kwargs_for
from effnet_cli.training.report import evaluate, plot_confusion, plot_curves
from effnet_cli.training.state import Running, TrainState

REPORT = "report.json"
REPORT_PAGE = "report.html"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"


@torch.inference_mode()
def _predict(state: TrainState, samples: Samples) -> torch.Tensor:
    """Validation logits, in the order of ``samples`` (no augmentation)."""
    model, amp, device = state.model, state.amp, state.device
    model.eval()
    if state.features is not None:
        with amp:
            return model.classifier(state.features["val"].to(device)).float().cpu()
    from effnet_cli.data import iter_batches

    processor = state.processor
    chunks = []
    for batch in iter_batches(samples.paths, processor.preprocess_pil, batch_size=state.opts.batch_size,
                              workers=state.workers, open_kwargs=open_kwargs_for(processor)):
        if batch.errors:  # the file changed since the check: it cannot be scored
            raise InputError(f"{samples.paths[batch.errors[0][0]]}: {batch.errors[0][1]} (it decoded before training).")
        with amp:
            chunks.append(model(batch.pixel_values.to(device).contiguous(memory_format=torch.channels_last))
                          .logits.float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, len(state.split.classes))


def epoch_record(state: TrainState, epoch: int, running: Running) -> dict[str, Any]:
    """The line of metrics.jsonl for a finished epoch: its training numbers and the validation scores."""
    split = state.split
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": running.loss / max(1, running.seen),
        "train_accuracy": running.correct / max(1, running.seen),
        "lr": state.scheduler.get_last_lr()[0],
        "seconds": round(running.seconds, 3),
        "images_per_s": round(running.seen / running.seconds, 2) if running.seconds else None,
    }
    if split.val is not None and len(split.val):
        logits = _predict(state, split.val)
        scores = evaluate(logits, torch.tensor(split.targets(split.val)), split.classes)
        # val_top5 is top-k with k = min(5, classes): val_top5_k says which, as the console's "top-2" does.
        record.update(val_loss=scores["loss"], val_top1=scores["top1"], val_top5=scores["top5"],
                      val_top5_k=scores["top5_k"])
    return record


def final_report(state: TrainState) -> dict[str, Any]:
    """report.json: the counts and, with validation images, the full validation report."""
    split = state.split
    report: dict[str, Any] = {"classes": split.classes, "train_images": len(split.train),
                              "val_images": len(split.val) if split.val is not None else 0,
                              "skipped_files": len(split.errors)}
    if split.val is not None and len(split.val):
        logits = _predict(state, split.val)
        targets = torch.tensor(split.targets(split.val))
        report["validation"] = evaluate(logits, targets, split.classes)
        report["validation"]["misclassified"] = misclassified(split.val.paths, logits, targets, split.classes)
    return report


def misclassified(paths: list[str], logits: torch.Tensor, targets: torch.Tensor,
                  classes: list[str]) -> list[dict[str, Any]]:
    """The validation images whose top-1 class is wrong: path, true and predicted class, the prediction's score."""
    probs = torch.softmax(logits.float(), dim=-1)
    scores, predicted = probs.max(dim=-1)
    return [{**path_fields(paths[i]), "true": classes[int(targets[i])], "predicted": classes[int(predicted[i])],
             "score": float(scores[i])}
            for i in range(len(paths)) if int(predicted[i]) != int(targets[i])]


def write_outputs(state: TrainState, final: dict[str, Any]) -> None:
    """The trained model (config, weights, preprocessing), the report and its pictures, into the output directory."""
    from safetensors.torch import save

    from effnet_cli.core.checkpoint import config_json

    out, model, processor = state.out, state.model, state.processor
    sized = {"image_size": state.opts.image_size} if state.opts.image_size is not None else {}
    out.write("config.json", config_json(model, architectures=[type(model).__name__], **sized).encode())
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    out.write("model.safetensors", save(tensors, metadata={"format": "pt"}))
    out.write("preprocessor_config.json", (processor.to_json_string() + "\n").encode()
              if hasattr(processor, "to_json_string") else json.dumps(processor.to_dict()).encode())
    out.write(REPORT, (json.dumps(final, indent=2, ensure_ascii=False) + "\n").encode())
    curves = plot_curves(state.history)
    if curves is not None:
        out.write(CURVES_PNG, curves)
    confusion = final.get("validation", {}).get("confusion")
    picture = plot_confusion(confusion, state.split.classes) if confusion else None
    if picture is not None:
        out.write(CONFUSION_PNG, picture)
    page = finetune_page(final, curves, picture, state.split.classes)
    if page is not None:  # without Jinja2 the directory holds everything else
        out.write(REPORT_PAGE, page.encode("utf-8"))


