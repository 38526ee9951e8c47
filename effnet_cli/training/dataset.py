"""Labelled datasets for fine-tuning: image folders or CSV/JSONL lists, checked before any training.

A dataset is either a directory with one subdirectory per class (the folder
names become the labels, in sorted order) or a ``.csv`` / ``.jsonl`` file of
``path,label`` rows (paths relative to the file). Every problem a user can fix
is an :class:`~effnet_cli.errors.InputError` raised here, before a model is
even loaded: a dataset with one class, a class with no usable image, a
validation set whose classes differ from the training set's.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from effnet_cli.data import IMAGE_EXTENSIONS, discover_inputs
from effnet_cli.data.inputs import _natural_key
from effnet_cli.errors import InputError

LIST_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Samples:
    """Image paths with their class names, in a stable order."""

    paths: list[str]
    labels: list[str]
    source: str  # what the user gave (directory or list file), for messages
    folder_classes: list[str] | None = None  # class folders found, empty ones included (image-folder layout only)

    def __len__(self) -> int:
        return len(self.paths)

    def classes(self) -> list[str]:
        """Distinct labels, in natural sort order (so ``class2`` comes before ``class10``)."""
        return sorted(set(self.labels), key=_natural_key)

    def subset(self, keep: Sequence[int]) -> Samples:
        """The samples at positions ``keep``, in that order."""
        return Samples([self.paths[i] for i in keep], [self.labels[i] for i in keep], self.source,
                       self.folder_classes)


@dataclass
class Split:
    """The training and validation samples of one run, and the class list that fixes label indices."""

    train: Samples
    val: Samples | None
    classes: list[str]
    errors: list[dict] = field(default_factory=list)  # {"path", "error"} for every unusable file

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.classes))

    def targets(self, samples: Samples) -> list[int]:
        """Class indices of ``samples``."""
        index = {name: i for i, name in enumerate(self.classes)}
        return [index[label] for label in samples.labels]


def read_samples(source: str | os.PathLike[str]) -> Samples:
    """Read an image-folder dataset or a CSV/JSONL list of ``path,label`` rows."""
    path = Path(source)
    if path.is_dir():
        return _read_folders(path)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    if path.is_file():
        raise InputError(f"{path}: give a directory with one folder per class, or a .csv/.jsonl of path,label rows.")
    raise InputError(f"{path}: no such directory or file.")


def _read_folders(root: Path) -> Samples:
    try:
        entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: _natural_key(e.name))
    except OSError as exc:
        raise InputError(f"{root}: cannot list it ({exc.strerror}).") from None
    folders = [e for e in entries if e.is_dir()]
    if not folders:
        raise InputError(f"{root} has no class folders; put each class's images in a subdirectory named after it.")
    paths, labels = [], []
    for folder in folders:
        images = [p for p in _images_under(folder.path)]
        paths += images
        labels += [folder.name] * len(images)
    return Samples(paths, labels, str(root), folder_classes=[f.name for f in folders])


def _images_under(directory: str) -> list[str]:
    try:
        return discover_inputs([directory])
    except InputError:
        return []  # an empty class folder: reported by check_classes with the class name


def _read_list(path: Path) -> Samples:
    base = path.parent
    rows: list[tuple[str, str]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}.") from None
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append((str(record["path"]), str(record["label"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path}, line {n}: expected a JSON object with \"path\" and \"label\".") from None
    else:
        reader = csv.reader(text.split("\n"))
        for n, row in enumerate(reader, 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue  # header
            if len(row) < 2 or not row[1].strip():
                raise InputError(f"{path}, line {n}: expected path,label.")
            rows.append((row[0], row[1].strip()))
    if not rows:
        raise InputError(f"{path} lists no images.")
    paths = [p if os.path.isabs(p) else str(base / p) for p, _ in rows]
    return Samples(paths, [label for _, label in rows], str(path))


def check_classes(samples: Samples, *, what: str = "the dataset") -> None:
    """Refuse a dataset that cannot train a classifier: one class, or a class with no usable image."""
    if samples.folder_classes is not None:
        empty = [c for c in samples.folder_classes if c not in set(samples.labels)]
        if empty:
            raise InputError(f"Class folder {empty[0]!r} in {samples.source} has no usable image"
                             + (f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else "") + ".")
    classes = samples.classes()
    if len(classes) < 2:
        named = f" ({classes[0]!r})" if classes else ""
        raise InputError(f"{what.capitalize()} has {len(classes)} class{named}; a classifier needs at least 2.")


def check_val_classes(train: Samples, val: Samples) -> None:
    """Refuse a validation set whose classes are not those of the training set."""
    train_classes, val_classes = set(train.labels), set(val.labels)
    unknown = sorted(val_classes - train_classes, key=_natural_key)
    if unknown:
        raise InputError(f"Validation label {unknown[0]!r} in {val.source} is not a class of the training data "
                         f"{train.source}" + (f" ({len(unknown) - 1} more such labels)" if len(unknown) > 1 else "") + ".")
    if val.folder_classes is not None:
        missing = sorted(train_classes - set(val.folder_classes), key=_natural_key)
        extra = sorted(set(val.folder_classes) - train_classes, key=_natural_key)
        if missing or extra:
            detail = (f"it lacks {', '.join(map(repr, missing))}" if missing
                      else f"it has {', '.join(map(repr, extra))} which training does not")
            raise InputError(f"The classes of --val {val.source} differ from training: {detail}.")


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions for training and validation: ``fraction`` of each class (rounded) held out, seeded.

    Every class keeps at least one training image; a class with a single
    image therefore has none in validation.
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"--val-split must be at least 0 and below 1, got {fraction}.")
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(samples.labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class, key=_natural_key):
        members = by_class[label][:]
        rng.shuffle(members)
        n_val = min(len(members) - 1, round(len(members) * fraction))
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


__all__ = ["Samples", "Split", "read_samples", "check_classes", "check_val_classes", "stratified_split",
           "IMAGE_EXTENSIONS", "LIST_SUFFIXES"]
