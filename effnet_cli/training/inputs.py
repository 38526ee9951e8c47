"""The images of a fine-tuning run: the split, unusable files, the training dataset, preprocessing, features."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any

import torch
from torch import nn

from effnet_cli.data.limits import DEFAULT_DECODE_TIMEOUT, TimeLimitExceeded, call_with_time_limit
from effnet_cli.training import recipe
from effnet_cli.training.dataset import (
    Split,
    check_classes,
    check_val_classes,
    read_samples,
    stratified_split,
)
from effnet_cli.training.options import Callback, FinetuneOptions


def prepare_split(data: str, opts: FinetuneOptions) -> Split:
    samples = read_samples(data)
    check_classes(samples)
    if opts.val is not None:
        val = read_samples(opts.val)
        check_val_classes(samples, val)
        train = samples
    elif opts.val_split > 0:
        train_pos, val_pos = stratified_split(samples, opts.val_split, opts.seed)
        train, val = samples.subset(train_pos), (samples.subset(val_pos) if val_pos else None)
    else:
        train, val = samples, None
    return Split(train=train, val=val, classes=samples.classes())


def drop_failed(split: Split, failed: dict[str, str], val_given: bool) -> Split:
    """Remove unusable files, record them, and re-check that every class still has an image."""
    errors = [{"path": p, "error": e} for p, e in failed.items()]
    train = split.train.subset([i for i, p in enumerate(split.train.paths) if p not in failed])
    val = None
    if split.val is not None:
        val = split.val.subset([i for i, p in enumerate(split.val.paths) if p not in failed])
    check_classes(train, what="the training data")
    if val is not None and val_given:
        check_val_classes(train, val)
    return Split(train=train, val=val, classes=split.classes, errors=errors)


def fingerprint(split: Split) -> str:
    """A digest of the exact image list and labels, so a resume on changed data is refused."""
    h = hashlib.sha256()
    for name, part in (("train", split.train), ("val", split.val)):
        h.update(name.encode())
        if part is not None:
            for p, label in zip(part.paths, part.labels):
                h.update(p.encode("utf-8", "surrogateescape") + b"\0" + label.encode() + b"\0")
    return h.hexdigest()[:16]


class ImageSet(torch.utils.data.Dataset):
    """Training images with augmentation seeded per (seed, epoch, image), so results do not depend on workers."""

    def __init__(self, paths: list[str], targets: list[int], transform: Any, open_kwargs: dict, seed: int,
                 epoch: int, time_limit: float | None = DEFAULT_DECODE_TIMEOUT) -> None:
        self.paths, self.targets, self.transform = paths, targets, transform
        self.open_kwargs, self.seed, self.epoch = open_kwargs, seed, epoch
        self.time_limit = time_limit  # seconds each image's read and decode may take (None: no limit)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        from effnet_cli.data import open_image
        from effnet_cli.errors import DecodeError

        try:
            # Every epoch reads the files again: one whose read now hangs (a stale network mount) is left out
            # of this batch at the limit, as one that has become unreadable is, instead of stopping the run.
            image = call_with_time_limit(self.time_limit, partial(open_image, self.paths[i], **self.open_kwargs))
        except (DecodeError, TimeLimitExceeded):
            return None  # the file changed since the check; the batch goes on without it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.sample_seed(self.seed, self.epoch, i))
            return self.transform(image), self.targets[i]


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    kept = [x for x in items if x is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept])



def sized_processor(processor: Any, image_size: int) -> Any:
    """The model's preprocessing at ``image_size``, keeping its resize-then-crop ratio."""
    if processor.do_center_crop and "shortest_edge" in processor.size:
        crop = processor.crop_size["height"]
        edge = round(image_size * processor.size["shortest_edge"] / crop)
        return processor.replace(size={"shortest_edge": edge}, crop_size={"height": image_size, "width": image_size})
    if processor.do_center_crop:
        return processor.replace(size={"height": image_size, "width": image_size}, do_center_crop=False)
    return processor.replace(size={"height": image_size, "width": image_size})


def open_kwargs_for(processor: Any) -> dict[str, Any]:
    """Decode JPEGs at reduced size when that still leaves 1.5× the pixels the model needs."""
    from effnet_cli.data.decode import DRAFT_MARGIN

    size = processor.size
    side = size.get("shortest_edge") or max(size.get("height", 0), size.get("width", 0))
    return {"draft_size": (round(DRAFT_MARGIN * side),) * 2}


def decode_workers(requested: int | None) -> int:
    """Decode processes: as many as asked, else up to 2."""
    from effnet_cli.data import default_workers

    return min(2, default_workers()) if requested is None else requested


def extract_features(model: nn.Module, processor: Any, split: Split, opts: FinetuneOptions, device: torch.device,
                      emit: Callback) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Pooled features of every image (the linear probe's inputs), streamed as ``effnet embed`` does."""
    from effnet_cli.runtime.engine import Engine, embed_paths

    engine = Engine(model, processor, device=device, dtype=opts.dtype, max_pixels=opts.pixel_limit,
                    decode_timeout=opts.time_limit)
    workers = decode_workers(opts.workers)
    out: dict[str, torch.Tensor] = {}
    failed: dict[str, str] = {}
    parts = [("train", split.train)] + ([("val", split.val)] if split.val is not None else [])
    total = sum(len(s) for _, s in parts)
    done = 0
    emit({"event": "features", "images": total})
    for name, samples in parts:
        rows = []
        for batch in embed_paths(engine, samples.paths, batch_size=opts.batch_size, workers=workers):
            rows.append(torch.from_numpy(batch.features).float())
            for result in batch.results:
                if result.error is not None:
                    failed[result.path] = result.error
            done += len(batch.results)
            emit({"event": "embedded", "done": done, "images": total})
        out[name] = torch.cat(rows) if rows else torch.empty(0, engine.feature_dim())
    return out, failed


