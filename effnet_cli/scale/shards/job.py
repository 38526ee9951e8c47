"""What a run writes: the job (inputs, partition, settings, layout) and the names of its files.

Two layouts share one machinery:

- a directory of shards (``--output-dir``): ``emb_00000.npy`` + ``meta_00000.parquet``
  (+ ``errors_00000.jsonl``) or ``pred_00000.jsonl``, each with a completion
  marker ``_done_emb_00000.json`` written last;
- one file (``embed -o OUT.npy``): a single shard whose files are ``OUT.npy`` and
  its manifest ``OUT.jsonl``, with a hidden marker ``.OUT.npy.done.json``.

While a shard is being written its rows go to partial files under fixed
hidden names (``.emb_00000.npy.partial`` …; ``OUT.npy.partial`` and
``OUT.jsonl.partial`` for ``-o``) beside a partial marker that records the
settings, so a killed run resumes where it stopped, and only with the same
settings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError
from effnet_cli.scale.shards.partition import Partition

__all__ = ["DEFAULT_SHARD_SIZE", "MARKER_FORMAT", "META_FORMATS", "KINDS", "ShardJob", "Shard", "lock_path"]

# 10 000 rows of 1280 float32 features is ~50 MB: big enough that a million
# images make a hundred files, small enough that a redone shard costs minutes.
DEFAULT_SHARD_SIZE = 10_000

MARKER_FORMAT = "effnet-shards/2"
META_FORMATS = ("parquet", "jsonl")
KINDS = {"embed": "emb", "classify": "pred"}  # command -> stem of its data files and markers


def lock_path(kind: str, directory: Path, partition: Partition, single: Path | None = None) -> Path:
    """The lock file of an output: ``.OUT.npy.lock`` beside ``-o``, ``DIR/.lock_emb[_p001of004]`` in a directory."""
    if single is not None:
        return Path(single).with_name(f".{Path(single).name}.lock")
    return Path(directory) / f".lock_{KINDS[kind]}_{partition.tag}".rstrip("_")


@dataclass
class ShardJob:
    """Everything that decides which files a run writes; picklable, so device workers get one each.

    ``paths`` is this partition's list (``partition.select(all_paths)``) and
    ``total`` the length of the full list, from which global indices follow.
    ``settings`` (model and weights, features, dtype, preprocessing, metadata
    format ...) is stored in every partial and every marker, so a resume with
    other settings is refused instead of mixing two kinds of rows.
    ``single`` makes the run one shard written as that ``.npy`` plus its
    ``.jsonl`` manifest (``embed -o``).
    """

    kind: str  # "embed" or "classify"
    directory: Path
    paths: Sequence[str]
    total: int
    partition: Partition = field(default_factory=Partition)
    shard_size: int = DEFAULT_SHARD_SIZE
    settings: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    meta_format: str = "parquet"  # "parquet" or "jsonl"
    single: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.meta_format not in META_FORMATS:
            raise InputError(f"--meta-format must be one of {', '.join(META_FORMATS)}, got {self.meta_format!r}.")
        if self.single is not None:
            self.single = Path(self.single)
            self.directory = self.single.parent
            self.shard_size = max(1, len(self.paths))
        if self.shard_size < 1:
            raise InputError(f"--shard-size must be at least 1, got {self.shard_size}.")
        self.directory = Path(self.directory)

    def for_partition(self, partition: Partition, paths: Sequence[str]) -> ShardJob:
        """The same job restricted to a sub-partition (see :meth:`Partition.split`)."""
        return ShardJob(kind=self.kind, directory=self.directory, paths=paths, total=self.total,
                        partition=partition, shard_size=self.shard_size, settings=self.settings,
                        resume=self.resume, meta_format=self.meta_format)

    @property
    def stem(self) -> str:
        """``emb`` or ``pred``."""
        return KINDS[self.kind]

    @property
    def output(self) -> Path:
        """What the run writes, as a user named it: the ``-o`` file or the ``--output-dir``."""
        return self.single if self.single is not None else self.directory

    @property
    def number_width(self) -> int:
        """Digits of shard numbers: at least 5, more when needed, equal for every partition of the run."""
        largest = -(-self.total // self.partition.count)
        shards = -(-largest // self.shard_size)
        return max(5, len(str(max(shards - 1, 0))))

    def shard_name(self, prefix: str, number: int, suffix: str) -> str:
        """``{prefix}_{partition tag}{number}{suffix}``, e.g. ``emb_p001of004_00003.npy``."""
        return f"{prefix}_{self.partition.tag}{number:0{self.number_width}d}{suffix}"

    def lock_path(self) -> Path:
        """The lock file of this job's output (one per partition in a shared directory)."""
        return lock_path(self.kind, self.directory, self.partition, self.single)

    def marker(self, number: int) -> Path:
        """The completion marker of shard ``number``."""
        if self.single is not None:
            return self.single.with_name(f".{self.single.name}.done.json")
        return self.directory / self.shard_name(f"_done_{self.stem}", number, ".json")

    def files(self, number: int) -> dict[str, Path]:
        """Every finished data file shard ``number`` may have, by role."""
        d = self.directory
        if self.single is not None:
            return {"emb": self.single, "manifest": self.single.with_suffix(".jsonl")}
        if self.kind == "classify":
            return {"pred": d / self.shard_name("pred", number, ".jsonl")}
        return {"emb": d / self.shard_name("emb", number, ".npy"),
                "meta": d / self.shard_name("meta", number, f".{self.meta_format}"),
                "errors": d / self.shard_name("errors", number, ".jsonl")}

    def partials(self, number: int) -> dict[str, Path]:
        """The partial files of shard ``number`` while it is written: marker, records and (embed) array."""
        if self.single is not None:
            manifest = self.single.with_suffix(".jsonl")
            return {"marker": self.single.with_name(f".{self.single.name}.partial.json"),
                    "records": manifest.with_name(manifest.name + ".partial"),
                    "emb": self.single.with_name(self.single.name + ".partial")}
        d = self.directory
        found = {"marker": d / ("." + self.shard_name(f"{self.stem}", number, ".partial.json")),
                 "records": d / ("." + self.shard_name(self.stem, number, ".jsonl.partial"))}
        if self.kind == "embed":
            found["emb"] = d / ("." + self.shard_name("emb", number, ".npy.partial"))
        return found

    def shards(self) -> Iterator[Shard]:
        """The shards of this partition, in order."""
        positions = self.partition.positions(self.total)
        if not self.paths and self.single is not None:
            yield Shard(0, positions[0:0], [])
            return
        for number, first in enumerate(range(0, len(self.paths), self.shard_size)):
            last = min(first + self.shard_size, len(self.paths))
            yield Shard(number, positions[first:last], self.paths[first:last])


@dataclass
class Shard:
    """One shard: its number and the global indices and paths of its inputs."""

    number: int
    indices: range
    paths: Sequence[str]

    def fingerprint(self) -> str:
        """Hash of the shard's input paths: a resume over other inputs must not reuse it."""
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(os.fsencode(path) + b"\0")
        return digest.hexdigest()
