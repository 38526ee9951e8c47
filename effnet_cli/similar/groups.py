"""Near-duplicate groups: pairs above a cosine threshold, joined into groups, one member kept per group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from effnet_cli.errors import InputError
from effnet_cli.similar.ann import pairs_near
from effnet_cli.similar.search import pairs_above
from effnet_cli.similar.store import Entry

__all__ = ["DEFAULT_THRESHOLDS", "KEEP_RULES", "Group", "default_threshold", "find_groups"]

# Chosen on the near-duplicate benchmark (docs/benchmarks.md, "Near-duplicates"): each feature kind's best F1.
DEFAULT_THRESHOLDS = {"layout": 0.83, "head": 0.85}
KEEP_RULES = ("largest", "oldest", "first")


@dataclass(frozen=True)
class Group:
    """Files that are the same picture: ``members`` in input (or index) order, ``keep`` one of them.

    ``scores[i]``: member i's similarity to the kept one (1.0 for the kept one itself).
    """

    members: list[Entry]
    keep: int
    scores: list[float]

    @property
    def removable(self) -> list[Entry]:
        """Every member but the kept one."""
        return [m for i, m in enumerate(self.members) if i != self.keep]


def _components(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [members for members in groups.values() if len(members) > 1]


def _kept(members: list[Entry], rule: str) -> int:
    if rule == "largest":  # ties: the first
        return max(range(len(members)), key=lambda i: (members[i].size, -i))
    if rule == "oldest":
        return min(range(len(members)), key=lambda i: (members[i].mtime_ns, i))
    return 0


def default_threshold(features: str) -> float:
    """The threshold the benchmark chose for an index of ``features``."""
    return DEFAULT_THRESHOLDS[features]


def check_dedupe_options(threshold: float, keep: str) -> None:
    """One-line usage errors for a threshold outside (0, 1] or an unknown keep rule."""
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold is a cosine similarity between 0 and 1, got {threshold}.")
    if keep not in KEEP_RULES:
        raise InputError(f"--keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}.")


def find_groups(vectors: np.ndarray, entries: Sequence[Entry], *, threshold: float = DEFAULT_THRESHOLDS["layout"],
                keep: str = "largest", approximate: Any = None) -> list[Group]:
    """Groups of near-duplicates among ``entries`` (row i of ``vectors`` is entry i), in order of first member.

    ``approximate``: the index's approximate index; the candidate pairs are then each row's nearest
    neighbours (:func:`effnet_cli.similar.ann.pairs_near`) instead of every pair of rows.
    """
    check_dedupe_options(threshold, keep)
    if approximate is None:
        pairs = list(pairs_above(vectors, threshold))
    else:
        pairs = list(pairs_near(approximate, vectors, threshold))
    groups = []
    for rows in _components(len(entries), pairs):
        members = [entries[r] for r in rows]
        kept = _kept(members, keep)
        anchor = np.asarray(vectors[rows[kept]], dtype=np.float32)
        scores = (np.asarray(vectors[rows], dtype=np.float32) @ anchor).tolist()
        groups.append(Group(members, kept, [float(s) for s in scores]))
    return groups  # components come out in order of their first member
