"""``finetune``'s ``report.html`` beside the model: the curves, the confusion matrix, the misclassified validation images."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from effnet_cli.records.pathtext import display_path, path_from_fields
from effnet_cli.report.page import Bar, Card, Page, Section, image_uri, render, thumbnail

MAX_CARDS = 1000  # misclassified images shown (the most confident mistakes first); report.json lists them all


def finetune_page(final: dict[str, Any], curves: bytes | None, confusion: bytes | None,
                  classes: Sequence[str]) -> str | None:
    """The page's HTML, or None without Jinja2 (the run still writes report.json and the PNGs)."""
    if importlib.util.find_spec("jinja2") is None:
        return None
    validation = final.get("validation") or {}
    summary = [f"{len(classes)} classes", f"{final.get('train_images', 0)} training images",
               f"{final.get('val_images', 0)} validation images"]
    if "top1" in validation:
        summary.append(f"validation top-1 {validation['top1']:.1%}")
    figures = [(caption, image_uri(png)) for caption, png in (("Loss and accuracy per epoch", curves),
                                                            ("Confusion matrix (rows: true class)", confusion))
               if png is not None]
    sections = [Section(heading="Training", figures=figures,
                        text=None if figures else "Install matplotlib (effnet-cli[plot]) for the curves.")]
    wrong = sorted(validation.get("misclassified", []), key=lambda m: -m["score"])
    if "misclassified" in validation:
        shown = f" (the {MAX_CARDS} most confident shown)" if len(wrong) > MAX_CARDS else ""
        sections.append(Section(heading=f"Misclassified validation images: {len(wrong)}{shown}",
                                cards=[_card(m) for m in wrong[:MAX_CARDS]],
                                text=None if wrong else "Every validation image was classified right."))
    keys = sorted({m["true"] for m in wrong[:MAX_CARDS]})
    return render(Page(title="effnet finetune", summary=summary, sections=sections, filter_keys=keys))


def _card(entry: dict[str, Any]) -> Card:
    path = path_from_fields(entry)
    return Card(title=display_path(path), thumb=thumbnail(path), flags=("wrong",), key=entry["true"],
                note=f"true: {entry['true']} · predicted: {entry['predicted']}",
                bars=[Bar(entry["predicted"], entry["score"])])
