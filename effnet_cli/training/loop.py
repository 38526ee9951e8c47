"""The fine-tuning run: check the data, load the model, train (resumably), evaluate, write OUT_DIR.

Two paths share one loop. ``freeze="backbone"`` (a linear probe) computes
every image's pooled features once, streaming as ``effnet embed`` does, and
trains only the classifier on them. Otherwise images are decoded and
augmented every epoch and the unfrozen part of the network trains with them.

A checkpoint (model, optimizer, scheduler, RNG state, position in the
epoch's seeded order) is written atomically after every epoch and on Ctrl-C;
``resume=True`` continues from it and, on a CPU, ends with the same weights
as an uninterrupted run. Nothing here prints: progress goes to ``callback``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effnet_cli.errors import InputError
from effnet_cli.training import recipe
from effnet_cli.training.dataset import (
    Samples,
    Split,
    check_classes,
    check_val_classes,
    read_samples,
    stratified_split,
)
from effnet_cli.training.files import OutputDir
from effnet_cli.training.report import evaluate, plot_confusion, plot_curves

CHECKPOINT = "checkpoint.pt"
FEATURES = "features.pt"  # the linear probe's inputs, computed once and kept until the run completes
METRICS = "metrics.jsonl"
ERRORS = "errors.jsonl"
REPORT = "report.json"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
_CHECKPOINT_VERSION = 1

Callback = Callable[[dict[str, Any]], None]


@dataclass
class FinetuneOptions:
    """Settings of one run. ``None`` means the default for the chosen ``freeze`` (see :func:`defaults`)."""

    model: str = "lite0"  # starting weights: variant name, hub id or directory
    val: str | None = None  # a separate validation set (folder layout or list), else a split of the data
    val_split: float = 0.2  # share of each class held out for validation when val is None
    epochs: int | None = None
    lr: float | None = None  # peak learning rate, reached after the warm-up
    batch_size: int = 32
    image_size: int | None = None  # training and saved input size; None: chosen default
    freeze: str | int = "5"  # backbone, none, or the number of stages kept as loaded
    augment: str = "none"  # none, crop (random resized crop) or standard (crop + flip); see DEFAULT note
    label_smoothing: float = 0.1
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    dtype: str = "float32"  # float32 or bfloat16 (autocast; pays off on CPUs with AMX/AVX512-BF16 and on GPUs)
    workers: int | None = None  # decode processes; None: up to 2
    seed: int = 0
    resume: bool = False
    device: str = "auto"

    def resolved(self) -> FinetuneOptions:
        """A copy with every ``None`` default filled in and the values checked."""
        freeze = recipe.parse_freeze(self.freeze)
        probe = freeze == "backbone"
        out = FinetuneOptions(**{**asdict(self), "freeze": freeze})
        out.epochs = self.epochs if self.epochs is not None else (DEFAULT_PROBE_EPOCHS if probe else DEFAULT_EPOCHS)
        out.lr = self.lr if self.lr is not None else (DEFAULT_PROBE_LR if probe else DEFAULT_LR)
        # The probe's features cost one forward pass each: it keeps the model's own input size, so its
        # features are exactly what `effnet embed` gives. Training every epoch at that size would be slow.
        out.image_size = self.image_size if self.image_size is not None else (None if probe else DEFAULT_IMAGE_SIZE)
        if out.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {out.epochs}.")
        if out.lr <= 0:
            raise InputError(f"--lr must be positive, got {out.lr}.")
        if out.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {out.batch_size}.")
        if out.image_size is not None and not 16 <= out.image_size <= 1024:
            raise InputError(f"--image-size must be between 16 and 1024, got {out.image_size}.")
        if not 0.0 <= out.label_smoothing < 1.0:
            raise InputError(f"--label-smoothing must be in [0, 1), got {out.label_smoothing}.")
        if out.augment not in recipe.AUGMENTS:
            raise InputError(f"--augment must be one of {', '.join(recipe.AUGMENTS)}, got {out.augment!r}.")
        if out.dtype not in ("float32", "bfloat16"):
            raise InputError(f"--dtype must be float32 or bfloat16 for training, got {out.dtype!r}.")
        return out


# Defaults measured on a 10-class set of 1,000 training images on a 2-core CPU (docs/finetune.md). In a
# 5-epoch schedule, crop + flip augmentation cost accuracy there (94.4% against 98.4% without): it pays
# off only over longer schedules, so it is an option (--augment standard) rather than the default.
DEFAULT_IMAGE_SIZE = 128
DEFAULT_EPOCHS = 5
DEFAULT_LR = 1e-3
DEFAULT_PROBE_EPOCHS = 60
DEFAULT_PROBE_LR = 5e-3
# Fine-tuning first fits the new head on features of the unaugmented training images (a linear probe,
# seconds), then trains the network: a random head would send noisy gradients into the pretrained
# layers for the first epochs and undo part of what they know (LP-FT, Kumar et al., ICLR 2022).
HEAD_WARMUP_EPOCHS = 30

# Settings that must match for a resumed run to continue the same training.
_RESUME_KEYS = ("model", "val", "val_split", "epochs", "lr", "batch_size", "image_size", "freeze", "augment",
                "label_smoothing", "weight_decay", "warmup_epochs", "dtype", "seed")


@dataclass
class FinetuneResult:
    """What :func:`effnet_cli.finetune` returns: the trained model, its preprocessing and the numbers."""

    model: nn.Module
    processor: Any
    metrics: dict[str, Any]  # final validation report (top1, top5, per_class, confusion) and counts
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (metrics.jsonl)
    output_dir: Path | None = None


# ----------------------------------------------------------------- the data
def _prepare_split(data: str, opts: FinetuneOptions) -> Split:
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


def _drop_failed(split: Split, failed: dict[str, str], val_given: bool) -> Split:
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


def _fingerprint(split: Split) -> str:
    """A digest of the exact image list and labels, so a resume on changed data is refused."""
    h = hashlib.sha256()
    for name, part in (("train", split.train), ("val", split.val)):
        h.update(name.encode())
        if part is not None:
            for p, label in zip(part.paths, part.labels):
                h.update(p.encode("utf-8", "surrogateescape") + b"\0" + label.encode() + b"\0")
    return h.hexdigest()[:16]


class _ImageSet(torch.utils.data.Dataset):
    """Training images with augmentation seeded per (seed, epoch, image), so results do not depend on workers."""

    def __init__(self, paths: list[str], targets: list[int], transform: Any, open_kwargs: dict, seed: int,
                 epoch: int) -> None:
        self.paths, self.targets, self.transform = paths, targets, transform
        self.open_kwargs, self.seed, self.epoch = open_kwargs, seed, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        from effnet_cli.data import open_image
        from effnet_cli.errors import DecodeError

        try:
            image = open_image(self.paths[i], **self.open_kwargs)
        except DecodeError:
            return None  # the file changed since the check; the batch goes on without it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.sample_seed(self.seed, self.epoch, i))
            return self.transform(image), self.targets[i]


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    kept = [x for x in items if x is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept])


# ---------------------------------------------------------------- interrupt
@contextmanager
def _sigint_flag() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag the loop checks between steps, so the checkpoint is never half a step."""
    state = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(_signum: int, _frame: Any) -> None:
        if state["stop"]:  # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        state["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------- run
def finetune(data: str, output_dir: str | Path | None, *, callback: Callback | None = None,
             **options: Any) -> FinetuneResult:
    """Train a classifier for the classes in ``data`` and write it to ``output_dir``.

    ``data`` is a directory with one subdirectory of images per class, or a
    ``.csv``/``.jsonl`` of ``path,label`` rows. ``options`` are the fields of
    :class:`FinetuneOptions` (the command's options: ``epochs``, ``lr``,
    ``freeze``, ``val``, ``val_split``, ``image_size``, ``resume``...).
    ``output_dir`` receives config.json (with the class names as
    ``id2label``), model.safetensors, preprocessor_config.json,
    metrics.jsonl, errors.jsonl, report.json and, with matplotlib installed,
    curves.png and confusion.png; it loads with :func:`effnet_cli.load_pretrained`,
    ``effnet classify --model`` and transformers' ``from_pretrained``.
    ``callback`` receives progress events (dicts with an ``"event"`` key).

    Raises :class:`InputError` for bad data or options before training
    starts, and ``KeyboardInterrupt`` after writing a checkpoint on Ctrl-C.
    """
    held: list[OutputDir] = []
    try:
        return _finetune(data, output_dir, callback, options, held)
    finally:
        for out in held:  # the output directory's lock, also when the run stops with an error or Ctrl-C
            out.release()


def _finetune(data: str, output_dir: str | Path | None, callback: Callback | None, options: dict[str, Any],
              held: list[OutputDir]) -> FinetuneResult:
    unknown = set(options) - {f for f in FinetuneOptions.__dataclass_fields__}
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    opts = FinetuneOptions(**options).resolved()
    emit = callback or (lambda event: None)
    split = _prepare_split(str(data), opts)
    data_print = _fingerprint(split)  # the image list as read, before unusable files are dropped
    out = OutputDir(output_dir) if output_dir is not None else None
    if out is not None:
        out.claim()
        held.append(out)
    checkpoint = _load_checkpoint(out, opts) if opts.resume else None
    if checkpoint is None and out is not None and (out.path / CHECKPOINT).exists():
        raise InputError(f"{out.path} holds an interrupted run; add --resume to continue it, "
                         "or choose another output directory.")

    from effnet_cli.core.loading import load_pretrained
    from effnet_cli.runtime.fused import resolve_device

    device = resolve_device(opts.device)
    base_model, processor = load_pretrained(opts.model)
    if opts.image_size is not None:
        processor = _sized_processor(processor, opts.image_size)
    probe = opts.freeze == "backbone"

    if checkpoint is not None:
        split = _split_from(checkpoint)
        features = _load_features(out) if probe else None
    elif probe:
        # Features exist for the images that decoded, in order: the same rows the split keeps.
        features, failed = _extract_features(base_model, processor, split, opts, device, emit)
        split = _drop_failed(split, failed, opts.val is not None)
    else:
        # The same pass that finds unusable files gives the features the new head starts from.
        head_features, failed = _extract_features(base_model, processor, split, opts, device, emit)
        split = _drop_failed(split, failed, opts.val is not None)
        features = None
    settings = _settings(opts, data_print)
    if checkpoint is not None:
        _check_settings(checkpoint["settings"], settings)

    torch.manual_seed(opts.seed)  # the new head's initial weights
    model = recipe._with_new_head(base_model, split.id2label).to(device)
    frozen = recipe.frozen_modules(model, opts.freeze)
    recipe.apply_freeze(model, frozen)
    if checkpoint is None and not probe:
        emit({"event": "head", "epochs": HEAD_WARMUP_EPOCHS})
        recipe.fit_head(model.classifier, head_features["train"].to(device),
                        torch.tensor(split.targets(split.train), device=device), epochs=HEAD_WARMUP_EPOCHS,
                        lr=DEFAULT_PROBE_LR, weight_decay=opts.weight_decay, batch_size=opts.batch_size,
                        label_smoothing=opts.label_smoothing, seed=opts.seed)
        del head_features
    if out is not None and checkpoint is None:
        out.write(ERRORS, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in split.errors).encode())
        if features is not None:
            buf = io.BytesIO()
            torch.save(features, buf)
            out.write(FEATURES, buf.getvalue())

    train_targets = torch.tensor(split.targets(split.train))
    n_train = len(train_targets)
    steps_per_epoch = len(recipe.epoch_order(n_train, 0, 0, opts.batch_size))
    optimizer = recipe.make_optimizer(model.classifier if probe else model, opts.lr, opts.weight_decay)
    total = steps_per_epoch * opts.epochs
    scheduler = recipe.make_schedule(optimizer, total, round(opts.warmup_epochs * steps_per_epoch))
    history: list[dict[str, Any]] = []
    start_epoch, start_step, running = 0, 0, {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    if checkpoint is not None:
        (model.classifier if probe else model).load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        random.setstate(checkpoint["rng"]["python"])
        history = list(checkpoint["history"])
        start_epoch, start_step, running = checkpoint["epoch"], checkpoint["step"], dict(checkpoint["running"])
        emit({"event": "resumed", "epoch": start_epoch, "step": start_step})

    state = dict(opts=opts, split=split, settings=settings, features=features, model=model, optimizer=optimizer,
                 scheduler=scheduler, history=history, out=out, processor=processor)
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if opts.dtype == "bfloat16"
           else nullcontext())
    workers = min(2, _default_workers()) if opts.workers is None else opts.workers
    train_transform = None if probe else recipe.TrainTransform(processor, opts.image_size, opts.augment)
    open_kwargs = _open_kwargs(processor)

    emit({"event": "train", "epochs": opts.epochs, "steps": steps_per_epoch, "images": n_train,
          "val_images": len(split.val) if split.val is not None else 0, "probe": probe})
    with _sigint_flag() as sigint:
        for epoch in range(start_epoch, opts.epochs):
            batches = recipe.epoch_order(n_train, opts.seed, epoch, opts.batch_size)
            if probe:
                source: Any = ((features["train"][b], train_targets[b]) for b in batches[start_step:])
            else:
                dataset = _ImageSet(split.train.paths, train_targets.tolist(), train_transform, open_kwargs,
                                    opts.seed, epoch)
                source = torch.utils.data.DataLoader(
                    dataset, batch_sampler=batches[start_step:], num_workers=workers, collate_fn=_collate,
                    worker_init_fn=recipe.worker_init if workers else None, persistent_workers=False,
                    # Its own generator: a loader otherwise draws its worker seed from the global RNG, which
                    # a run resumed mid-epoch would draw at a different moment (and dropout would differ).
                    generator=torch.Generator().manual_seed(opts.seed + epoch))
            model.train()
            recipe.apply_freeze(model, frozen)
            tick = time.perf_counter()
            step = start_step
            try:
                for step, (x, y) in enumerate(source, start_step + 1):
                    if len(y):
                        x = x.to(device).contiguous(memory_format=torch.channels_last) if not probe else x.to(device)
                        y = y.to(device)
                        with amp:
                            logits = (model.classifier(model.dropout(x)) if probe else model(x).logits)
                            loss = recipe.loss_fn(logits, y, opts.label_smoothing)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        running["loss"] += float(loss.detach()) * len(y)
                        running["correct"] += int((logits.argmax(1) == y).sum())
                        running["seen"] += len(y)
                    scheduler.step()
                    now = time.perf_counter()
                    running["seconds"] += now - tick
                    tick = now
                    rate = running["seen"] / running["seconds"] if running["seconds"] else 0.0
                    done_steps = epoch * steps_per_epoch + step
                    per_step = running["seconds"] / max(1, step - start_step)
                    emit({"event": "step", "epoch": epoch + 1, "epochs": opts.epochs, "step": step,
                          "steps": steps_per_epoch, "loss": running["loss"] / max(1, running["seen"]),
                          "accuracy": running["correct"] / max(1, running["seen"]), "images_per_s": rate,
                          "eta_s": per_step * (total - done_steps)})
                    if sigint["stop"]:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                if out is not None:
                    _save_checkpoint(state, epoch, step, running)
                    emit({"event": "checkpoint", "epoch": epoch, "step": step, "interrupted": True})
                raise
            record = _epoch_record(state, epoch, running, amp, device, workers)
            history.append(record)
            emit({"event": "epoch", **record})
            start_step, running = 0, {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            if out is not None:
                out.write(METRICS, "".join(json.dumps(r) + "\n" for r in history).encode())
                _save_checkpoint(state, epoch + 1, 0, running)

    model.eval()
    final = _final_report(state, amp, device, workers)
    if out is not None:
        _write_outputs(state, processor, final)
        out.remove(CHECKPOINT)  # complete: the model files hold the result
        out.remove(FEATURES)
    model = model.cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    return FinetuneResult(model=model, processor=processor, metrics=final, history=history,
                          output_dir=out.path if out is not None else None)


# ----------------------------------------------------------- preprocessing
def _sized_processor(processor: Any, image_size: int) -> Any:
    """The model's preprocessing at ``image_size``, keeping its resize-then-crop ratio."""
    if processor.do_center_crop and "shortest_edge" in processor.size:
        crop = processor.crop_size["height"]
        edge = round(image_size * processor.size["shortest_edge"] / crop)
        return processor.replace(size={"shortest_edge": edge}, crop_size={"height": image_size, "width": image_size})
    if processor.do_center_crop:
        return processor.replace(size={"height": image_size, "width": image_size}, do_center_crop=False)
    return processor.replace(size={"height": image_size, "width": image_size})


def _open_kwargs(processor: Any) -> dict[str, Any]:
    """Decode JPEGs at reduced size when that still leaves 1.5× the pixels the model needs."""
    from effnet_cli.runtime.engine import DRAFT_MARGIN

    size = processor.size
    side = size.get("shortest_edge") or max(size.get("height", 0), size.get("width", 0))
    return {"draft_size": (round(DRAFT_MARGIN * side),) * 2}


def _default_workers() -> int:
    from effnet_cli.data import default_workers

    return default_workers()


def _extract_features(model: nn.Module, processor: Any, split: Split, opts: FinetuneOptions, device: torch.device,
                      emit: Callback) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Pooled features of every image (the linear probe's inputs), streamed as ``effnet embed`` does."""
    from effnet_cli.runtime.engine import Engine, embed_paths

    engine = Engine(model, processor, device=device, dtype=opts.dtype)
    workers = min(2, _default_workers()) if opts.workers is None else opts.workers
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


# ---------------------------------------------------------------- evaluate
@torch.inference_mode()
def _predict(state: dict, samples: Samples, amp: Any, device: torch.device, workers: int) -> torch.Tensor:
    """Validation logits, in the order of ``samples`` (no augmentation)."""
    model, opts = state["model"], state["opts"]
    model.eval()
    if state["features"] is not None:
        with amp:
            return model.classifier(state["features"]["val"].to(device)).float().cpu()
    from effnet_cli.data import iter_batches

    processor = state["processor"]
    chunks = []
    for batch in iter_batches(samples.paths, processor.preprocess_pil, batch_size=opts.batch_size, workers=workers,
                              open_kwargs=_open_kwargs(processor)):
        if batch.errors:  # the file changed since the check: it cannot be scored
            raise InputError(f"{samples.paths[batch.errors[0][0]]}: {batch.errors[0][1]} (it decoded before training).")
        with amp:
            chunks.append(model(batch.pixel_values.to(device).contiguous(memory_format=torch.channels_last))
                          .logits.float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, len(state["split"].classes))


def _epoch_record(state: dict, epoch: int, running: dict, amp: Any, device: torch.device, workers: int) -> dict:
    split: Split = state["split"]
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": running["loss"] / max(1, running["seen"]),
        "train_accuracy": running["correct"] / max(1, running["seen"]),
        "lr": state["scheduler"].get_last_lr()[0],
        "seconds": round(running["seconds"], 3),
        "images_per_s": round(running["seen"] / running["seconds"], 2) if running["seconds"] else None,
    }
    if split.val is not None and len(split.val):
        logits = _predict(state, split.val, amp, device, workers)
        scores = evaluate(logits, torch.tensor(split.targets(split.val)), split.classes)
        record.update(val_loss=scores["loss"], val_top1=scores["top1"], val_top5=scores["top5"])
    return record


def _final_report(state: dict, amp: Any, device: torch.device, workers: int) -> dict[str, Any]:
    split: Split = state["split"]
    report: dict[str, Any] = {"classes": split.classes, "train_images": len(split.train),
                              "val_images": len(split.val) if split.val is not None else 0,
                              "skipped_files": len(split.errors)}
    if split.val is not None and len(split.val):
        logits = _predict(state, split.val, amp, device, workers)
        report["validation"] = evaluate(logits, torch.tensor(split.targets(split.val)), split.classes)
    return report


# ---------------------------------------------------------------- outputs
def _write_outputs(state: dict, processor: Any, final: dict[str, Any]) -> None:
    from safetensors.torch import save

    out: OutputDir = state["out"]
    model = state["model"]
    from effnet_cli.core.checkpoint import config_json

    sized = {"image_size": state["opts"].image_size} if state["opts"].image_size is not None else {}
    out.write("config.json", config_json(model, architectures=[type(model).__name__], **sized).encode())
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    out.write("model.safetensors", save(tensors, metadata={"format": "pt"}))
    out.write("preprocessor_config.json", (processor.to_json_string() + "\n").encode()
              if hasattr(processor, "to_json_string") else json.dumps(processor.to_dict()).encode())
    out.write(REPORT, (json.dumps(final, indent=2, ensure_ascii=False) + "\n").encode())
    curves = plot_curves(state["history"])
    if curves is not None:
        out.write(CURVES_PNG, curves)
    confusion = final.get("validation", {}).get("confusion")
    picture = plot_confusion(confusion, state["split"].classes) if confusion else None
    if picture is not None:
        out.write(CONFUSION_PNG, picture)


# -------------------------------------------------------------- checkpoint
def _settings(opts: FinetuneOptions, data_print: str) -> dict[str, Any]:
    values = asdict(opts)
    settings = {k: values[k] for k in _RESUME_KEYS}
    settings["freeze"] = str(settings["freeze"])
    settings["data"] = data_print
    return settings


def _check_settings(saved: dict[str, Any], current: dict[str, Any]) -> None:
    for key in sorted(set(saved) | set(current)):
        if key == "data" and key in current:
            if saved.get(key) != current[key]:
                raise InputError("The images or labels differ from those of the interrupted run; resume with the "
                                 "same data or start a new output directory.")
            continue
        if key == "data":
            continue  # the first check, before the data is read again
        if saved.get(key) != current.get(key):
            name = "--" + key.replace("_", "-")
            raise InputError(f"The checkpoint was made with {name} {saved.get(key)!r}, this run asks for "
                             f"{current.get(key)!r}; resume with the same settings or start a new output directory.")


def _save_checkpoint(state: dict, epoch: int, step: int, running: dict) -> None:
    split: Split = state["split"]
    payload = {
        "version": _CHECKPOINT_VERSION,
        "settings": state["settings"],
        "epoch": epoch,
        "step": step,
        "running": dict(running),
        # The probe trains the classifier only: the backbone is the loaded one, not worth saving each epoch.
        "model": (state["model"].classifier if state["features"] is not None else state["model"]).state_dict(),
        "optimizer": state["optimizer"].state_dict(),
        "scheduler": state["scheduler"].state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "history": state["history"],
        "split": {"classes": split.classes, "errors": split.errors,
                  "train": [split.train.paths, split.train.labels, split.train.source],
                  "val": None if split.val is None else [split.val.paths, split.val.labels, split.val.source]},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    state["out"].write(CHECKPOINT, buf.getvalue())


def _load_checkpoint(out: OutputDir | None, opts: FinetuneOptions) -> dict[str, Any] | None:
    if out is None:
        raise InputError("--resume needs an output directory to resume from.")
    path = out.path / CHECKPOINT
    if not path.is_file():
        if (out.path / "model.safetensors").is_file():
            raise InputError(f"{out.path} holds a finished run; nothing to resume.")
        raise InputError(f"{out.path} has no checkpoint to resume from; run without --resume.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged file is the user's to remove, whatever the reason
        raise InputError(f"{path} is not a readable checkpoint; remove it to start over.") from None
    if checkpoint.get("version") != _CHECKPOINT_VERSION:
        raise InputError(f"{path} was written by another version of effnet; start a new output directory.")
    _check_settings(checkpoint["settings"], {k: str(v) if k == "freeze" else v
                                             for k, v in asdict(opts).items() if k in _RESUME_KEYS})
    return checkpoint


def _load_features(out: OutputDir) -> dict[str, torch.Tensor]:
    try:
        return torch.load(out.path / FEATURES, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        raise InputError(f"{out.path / FEATURES} is missing or damaged; start a new output directory.") from None


def _split_from(checkpoint: dict[str, Any]) -> Split:
    s = checkpoint["split"]
    train = Samples(*s["train"])
    val = Samples(*s["val"]) if s["val"] is not None else None
    return Split(train=train, val=val, classes=list(s["classes"]), errors=list(s["errors"]))
