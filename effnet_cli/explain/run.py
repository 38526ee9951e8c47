"""``effnet explain``'s work: images in, one record per image out, the overlay and heatmap files written.

Each input gets its own record, in input order: its top classes and the files written for each
explained class, or its error (an unreadable image costs its own record, not the run). Files are
published whole through the output layer (temporary, fsync, rename), so a killed run leaves
complete files or none for each class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from effnet_cli.data.decode import open_image
from effnet_cli.data.limits import DEFAULT_DECODE_TIMEOUT, TimeLimitExceeded, call_with_time_limit, timeout_reason
from effnet_cli.errors import DecodeError, InputError
from effnet_cli.explain.cam import Explainer, to_image_size
from effnet_cli.explain.overlay import heatmap_npy, overlay_png
from effnet_cli.output import make_dir, write_bytes
from effnet_cli.records.manifest import per_file_target
from effnet_cli.records.pathtext import PATH_BYTES_FIELD, path_fields
from effnet_cli.records.results import Prediction, Result
from effnet_cli.records.stream import classify_record

RECORD_TOP = 5  # predictions each record lists (at least the explained ones)


@dataclass(frozen=True)
class ExplainSettings:
    """What to explain and where the files go."""

    directory: Path  # -o DIR
    method: str  # a key of effnet_cli.explain.methods.METHODS
    classes: tuple[int, ...] = ()  # --class: these classes for every image (empty: the image's top ones)
    top: int = 1  # --top: the image's N best classes, when no --class is given
    batch_size: int = 8
    max_pixels: int | None = None
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT  # seconds per input's decode and preprocess (None: none)


def class_indices(names: Sequence[str], labels: Sequence[str]) -> tuple[int, ...]:
    """``--class`` values (an index, or a label, any case) as class indices; a usage error for an unknown one."""
    lowered = {label.lower(): i for i, label in enumerate(labels)}
    found = []
    for name in names:
        if name.strip().isdigit():
            index = int(name)
            if index >= len(labels):
                raise InputError(f"--class {name}: the model has classes 0..{len(labels) - 1}.")
        elif name.lower() in lowered:
            index = lowered[name.lower()]
        else:
            raise InputError(f"--class {name!r} is neither a class index nor one of the model's labels "
                             "(see config.json's id2label).")
        found.append(index)
    return tuple(dict.fromkeys(found))


def explain_paths(model: torch.nn.Module, processor: Any, paths: Sequence[str], settings: ExplainSettings,
                  device: torch.device) -> Iterator[dict[str, Any]]:
    """One record per input of ``paths``, in order, each image's files written before its record is yielded."""
    explainer = Explainer(model, settings.method, device)
    labels = [model.config.id2label.get(i, f"LABEL_{i}") for i in range(model.config.num_labels)]
    make_dir(settings.directory)
    for start in range(0, len(paths), settings.batch_size):
        yield from _explain_batch(explainer, processor, labels, paths[start:start + settings.batch_size], settings)


def _explain_batch(explainer: Explainer, processor: Any, labels: list[str], paths: Sequence[str],
                   settings: ExplainSettings) -> list[dict[str, Any]]:
    """The records of one batch: decode each input (an error is its record), then the model and the CAM once per rank."""
    images: dict[int, Any] = {}
    inputs: dict[int, torch.Tensor] = {}
    records: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        try:
            # In this process, as the loaders do in their workers: a read that blocks (a hung network file)
            # or a decode that runs away ends at --decode-timeout with the input's own record.
            images[i], inputs[i] = call_with_time_limit(settings.decode_timeout, _decode, path, processor, settings)
        except DecodeError as exc:
            records.append(classify_record(Result(position=i, path=path, error=str(exc))))
            continue
        except TimeLimitExceeded:
            records.append(classify_record(Result(position=i, path=path,
                                                  error=timeout_reason(settings.decode_timeout or 0))))
            continue
        records.append({})
    if not images:
        return records
    order = sorted(images)
    pixels = torch.stack([inputs[i] for i in order])
    probs = explainer.probabilities(pixels)
    k = min(max(RECORD_TOP, settings.top), probs.shape[-1])
    scores, indices = probs.topk(k, dim=-1)
    explained = [settings.classes or tuple(row[:settings.top]) for row in indices.tolist()]
    files: list[list[dict[str, Any]]] = [[] for _ in order]
    for rank in range(max(len(e) for e in explained)):
        heatmaps = explainer.heatmaps(pixels, [e[rank] for e in explained])
        for row, i in enumerate(order):
            index = explained[row][rank]
            files[row].append(_write_class(images[i], paths[i], heatmaps[row], processor, index, labels[index],
                                           float(probs[row, index]), settings))
    for row, i in enumerate(order):
        predictions = [Prediction(rank=r + 1, index=c, label=labels[c], score=s)
                       for r, (s, c) in enumerate(zip(scores[row].tolist(), indices[row].tolist()))]
        record = classify_record(Result(position=i, path=paths[i], predictions=predictions))
        records[i] = {**record, "method": settings.method, "explained": files[row]}
    return records


def _decode(path: str, processor: Any, settings: ExplainSettings) -> tuple[Any, torch.Tensor]:
    """One input's image (for the overlay) and its model input."""
    image = open_image(path, max_pixels=settings.max_pixels)
    return image, processor.preprocess_pil(image)


def _write_class(image: Any, path: str, heatmap: Any, processor: Any, index: int, label: str, score: float,
                 settings: ExplainSettings) -> dict[str, Any]:
    """Write one class's overlay PNG and heatmap .npy beside each other; their record entry."""
    full = to_image_size(heatmap, processor, image.height, image.width)
    overlay = per_file_target(settings.directory, path, f".{index}.png")
    npy = overlay.with_name(overlay.name[:-len(".png")] + ".npy")
    make_dir(overlay.parent)
    write_bytes(npy, heatmap_npy(full))
    write_bytes(overlay, overlay_png(image, full, f"{label} {score:.1%} ({settings.method})"))
    return {"index": index, "label": label, "score": score, **_named("overlay", overlay), **_named("heatmap", npy)}


def _named(key: str, path: Path) -> dict[str, str]:
    """A written file's record fields, lossless as input paths are: ``key``, plus ``key_bytes`` for names that are
    not UTF-8 (see :mod:`effnet_cli.records.pathtext`)."""
    fields = path_fields(path)
    return {key: fields["path"], **({f"{key}_{PATH_BYTES_FIELD}": fields[PATH_BYTES_FIELD]}
                                     if PATH_BYTES_FIELD in fields else {})}


