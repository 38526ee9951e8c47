"""Partitions: which inputs of the full list a job (``--shard I/N``, one device) holds."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from effnet_cli.data.pathlist import PathList
from effnet_cli.errors import InputError

__all__ = ["Partition", "parse_shard"]


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``: the inputs at positions ≡ index (mod count)."""

    index: int = 0
    count: int = 1

    def positions(self, total: int) -> range:
        """Positions in the full input list (of length ``total``) this partition holds."""
        return range(self.index, total, self.count)

    def select(self, paths: Sequence[str]) -> Sequence[str]:
        """The paths of this partition, in input order (a view when ``paths`` is a compact PathList)."""
        if isinstance(paths, PathList):
            return paths[self.index::self.count]
        return list(paths[self.index::self.count])

    def split(self, parts: int) -> list[Partition]:
        """This partition divided round-robin into ``parts`` (one per device).

        Position ``j`` of this partition's list is global position
        ``index + count*j``; taking every ``parts``-th ``j`` from ``i`` gives
        the global positions ≡ index + count*i (mod count*parts), which is
        again a partition, so nested splits keep the same naming scheme.
        """
        return [Partition(self.index + self.count * i, self.count * parts) for i in range(parts)]

    @property
    def tag(self) -> str:
        """The partition's part of file names: empty for an unsplit run, else ``p001of004_``."""
        if self.count == 1:
            return ""
        width = max(3, len(str(self.count - 1)))
        return f"p{self.index:0{width}d}of{self.count:0{width}d}_"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Partition:
    """``--shard I/N`` -> Partition(I, N), with I in 0..N-1 (Slurm's array ids start at 0)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise InputError(f"--shard must be I/N (e.g. 0/4), got {text!r}.")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard I/N needs N ≥ 1 and 0 ≤ I < N, got {text!r}.")
    return Partition(index, count)
