"""The fine-tuning run: check the data, load the model, train (resumably), evaluate, write OUT_DIR.

Two paths share one loop. ``freeze="backbone"`` (a linear probe) computes
every image's pooled features once, streaming as ``effnet embed`` does, and
trains only the classifier on them. Otherwise images are decoded and
augmented every epoch and the unfrozen part of the network trains with them.

A checkpoint (see :mod:`effnet_cli.training.state`) is written atomically
after every epoch and on Ctrl-C; ``resume=True`` continues from it and, on a
CPU, ends with the same weights as an uninterrupted run. Nothing here prints:
progress goes to ``callback``.
"""

from __future__ import annotations

import io
import json
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from effnet_cli.errors import InputError
from effnet_cli.training import recipe
from effnet_cli.training.dataset import Split
from effnet_cli.training.files import OutputDir
from effnet_cli.training.inputs import (
    ImageSet,
    collate,
    decode_workers,
    drop_failed,
    extract_features,
    fingerprint,
    open_kwargs_for,
    prepare_split,
    sized_processor,
)
from effnet_cli.training.options import (
    DEFAULT_PROBE_LR,
    HEAD_WARMUP_EPOCHS,
    Callback,
    FinetuneOptions,
    FinetuneResult,
)
from effnet_cli.training.outputs import epoch_record, final_report, write_outputs
from effnet_cli.training.state import (
    CHECKPOINT,
    FEATURES,
    Running,
    TrainState,
    check_settings,
    load_checkpoint,
    load_features,
    resume_settings,
    save_checkpoint,
    split_from,
)

METRICS = "metrics.jsonl"
ERRORS = "errors.jsonl"


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
    split = prepare_split(str(data), opts)
    data_print = fingerprint(split)  # the image list as read, before unusable files are dropped
    out = OutputDir(output_dir) if output_dir is not None else None
    if out is not None:
        out.claim()
        held.append(out)
    checkpoint = load_checkpoint(out, opts) if opts.resume else None
    if checkpoint is None and out is not None and (out.path / CHECKPOINT).exists():
        raise InputError(f"{out.path} holds an interrupted run; add --resume to continue it, "
                         "or choose another output directory.")
    state = _prepare(opts, split, data_print, out, checkpoint, emit)
    running, start_epoch, start_step = Running(), 0, 0
    if checkpoint is not None:
        running, start_epoch, start_step = _restore(state, checkpoint)
        emit({"event": "resumed", "epoch": start_epoch, "step": start_step})
    _train(state, running, start_epoch, start_step, emit)
    model = state.model
    model.eval()
    final = final_report(state)
    if out is not None:
        write_outputs(state, final)
        out.remove(CHECKPOINT)  # complete: the model files hold the result
        out.remove(FEATURES)
    model = model.cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    return FinetuneResult(model=model, processor=state.processor, metrics=final, history=state.history,
                          output_dir=out.path if out is not None else None)


def _prepare(opts: FinetuneOptions, split: Split, data_print: str, out: OutputDir | None,
             checkpoint: dict[str, Any] | None, emit: Callback) -> TrainState:
    """Load the model, find the usable images (computing features where the run needs them), build the
    optimizer and schedule: the state the loop starts from (a resumed run restores it after)."""
    from effnet_cli.core.loading import load_pretrained
    from effnet_cli.runtime.fused import resolve_device

    device = resolve_device(opts.device)
    base_model, processor = load_pretrained(opts.model)
    if opts.image_size is not None:
        processor = sized_processor(processor, opts.image_size)
    probe = opts.freeze == "backbone"
    head_features = None
    if checkpoint is not None:
        split = split_from(checkpoint)
        features = load_features(out) if probe else None
    else:
        # The probe's features exist for the images that decoded, in order: the same rows the split keeps.
        # Otherwise the same pass that finds unusable files gives the features the new head starts from.
        extracted, failed = extract_features(base_model, processor, split, opts, device, emit)
        split = drop_failed(split, failed, opts.val is not None)
        features, head_features = (extracted, None) if probe else (None, extracted)
    settings = resume_settings(opts, data_print)
    if checkpoint is not None:
        check_settings(checkpoint["settings"], settings)

    torch.manual_seed(opts.seed)  # the new head's initial weights
    model = recipe._with_new_head(base_model, split.id2label).to(device)
    frozen = recipe.frozen_modules(model, opts.freeze)
    recipe.apply_freeze(model, frozen)
    if head_features is not None:
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
    steps_per_epoch = _steps_per_epoch(len(split.train), opts)
    optimizer = recipe.make_optimizer(model.classifier if probe else model, opts.lr, opts.weight_decay)
    scheduler = recipe.make_schedule(optimizer, steps_per_epoch * opts.epochs,
                                     round(opts.warmup_epochs * steps_per_epoch))
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if opts.dtype == "bfloat16"
           else nullcontext())
    return TrainState(opts=opts, split=split, settings=settings, features=features, model=model, optimizer=optimizer,
                      scheduler=scheduler, out=out, processor=processor, device=device, amp=amp,
                      workers=decode_workers(opts.workers), frozen=frozen)


def _steps_per_epoch(n_train: int, opts: FinetuneOptions) -> int:
    return len(recipe.epoch_order(n_train, 0, 0, opts.batch_size))


def _restore(state: TrainState, checkpoint: dict[str, Any]) -> tuple[Running, int, int]:
    """Put the checkpoint's weights, optimizer, schedule, RNG and history back; where the run stopped."""
    state.trained.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    random.setstate(checkpoint["rng"]["python"])
    state.history = list(checkpoint["history"])
    return Running(**checkpoint["running"]), checkpoint["epoch"], checkpoint["step"]


def _train(state: TrainState, running: Running, start_epoch: int, start_step: int, emit: Callback) -> None:
    """The epochs left: train, score, record each, with a checkpoint after every epoch and on Ctrl-C."""
    opts, split, out = state.opts, state.split, state.out
    n_train = len(split.train)
    steps_per_epoch = _steps_per_epoch(n_train, opts)
    emit({"event": "train", "epochs": opts.epochs, "steps": steps_per_epoch, "images": n_train,
          "val_images": len(split.val) if split.val is not None else 0, "probe": state.probe})
    with _sigint_flag() as sigint:
        for epoch in range(start_epoch, opts.epochs):
            _epoch(state, epoch, start_step, running, sigint, emit)
            record = epoch_record(state, epoch, running)
            state.history.append(record)
            emit({"event": "epoch", **record})
            start_step, running = 0, Running()
            if out is not None:
                out.write(METRICS, "".join(json.dumps(r) + "\n" for r in state.history).encode())
                save_checkpoint(state, epoch + 1, 0, running)


def _source(state: TrainState, epoch: int, start_step: int) -> Any:
    """The epoch's batches from ``start_step`` on, in its seeded order: stored features, or augmented images."""
    opts, train = state.opts, state.split.train
    targets = torch.tensor(state.split.targets(train))
    batches = recipe.epoch_order(len(targets), opts.seed, epoch, opts.batch_size)
    if state.features is not None:
        return ((state.features["train"][b], targets[b]) for b in batches[start_step:])
    transform = recipe.TrainTransform(state.processor, opts.image_size, opts.augment)
    dataset = ImageSet(train.paths, targets.tolist(), transform,
                       {**open_kwargs_for(state.processor), "max_pixels": opts.pixel_limit}, opts.seed, epoch,
                       time_limit=opts.time_limit)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches[start_step:], num_workers=state.workers, collate_fn=collate,
        worker_init_fn=recipe.worker_init if state.workers else None, persistent_workers=False,
        # Its own generator: a loader otherwise draws its worker seed from the global RNG, which
        # a run resumed mid-epoch would draw at a different moment (and dropout would differ).
        generator=torch.Generator().manual_seed(opts.seed + epoch))


def _epoch(state: TrainState, epoch: int, start_step: int, running: Running, sigint: dict[str, bool],
           emit: Callback) -> None:
    """One epoch's steps from ``start_step``, adding to ``running``; on Ctrl-C, a checkpoint at the last step."""
    opts, model = state.opts, state.model
    steps_per_epoch = _steps_per_epoch(len(state.split.train), opts)
    total = steps_per_epoch * opts.epochs
    source = _source(state, epoch, start_step)
    model.train()
    recipe.apply_freeze(model, state.frozen)
    tick = time.perf_counter()
    step = start_step
    try:
        for step, (x, y) in enumerate(source, start_step + 1):
            if len(y):
                _step(state, x, y, running)
            state.scheduler.step()
            now = time.perf_counter()
            running.seconds += now - tick
            tick = now
            rate = running.seen / running.seconds if running.seconds else 0.0
            done_steps = epoch * steps_per_epoch + step
            per_step = running.seconds / max(1, step - start_step)
            emit({"event": "step", "epoch": epoch + 1, "epochs": opts.epochs, "step": step,
                  "steps": steps_per_epoch, "loss": running.loss / max(1, running.seen),
                  "accuracy": running.correct / max(1, running.seen), "images_per_s": rate,
                  "eta_s": per_step * (total - done_steps)})
            if sigint["stop"]:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if state.out is not None:
            save_checkpoint(state, epoch, step, running)
            emit({"event": "checkpoint", "epoch": epoch, "step": step, "interrupted": True})
        raise


def _step(state: TrainState, x: torch.Tensor, y: torch.Tensor, running: Running) -> None:
    """One optimizer step on a batch, its loss and hits added to ``running``."""
    model, device = state.model, state.device
    x = x.to(device).contiguous(memory_format=torch.channels_last) if not state.probe else x.to(device)
    y = y.to(device)
    with state.amp:
        logits = (model.classifier(model.dropout(x)) if state.probe else model(x).logits)
        loss = recipe.loss_fn(logits, y, state.opts.label_smoothing)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    running.loss += float(loss.detach()) * len(y)
    running.correct += int((logits.argmax(1) == y).sum())
    running.seen += len(y)


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


