"""``dedupe --report PAGE.html``: each group of near-duplicates side by side, the one kept marked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from effnet_cli.records.pathtext import display_path
from effnet_cli.report.page import Card, Page, Section, thumbnail, write_page


def write_dedupe_report(target: str | os.PathLike[str] | None, groups: Sequence[Any]) -> None:
    """Publish the page of ``groups`` (:class:`effnet_cli.similar.groups.Group`) at ``target``; nothing when None."""
    if target is None:
        return
    rows = [[_card(group, i) for i in range(len(group.members))] for group in groups]
    files = sum(len(group.members) for group in groups)
    removable = files - len(groups)
    summary = [f"{len(groups)} group{'s' if len(groups) != 1 else ''}", f"{files} files in them",
               f"{removable} removable", "nothing was deleted"]
    section = Section(heading="Groups of near-duplicates (the kept one marked)", groups=rows,
                      text=None if rows else "No near-duplicates.")
    write_page(target, Page(title="effnet dedupe", summary=summary, sections=[section]))


def _card(group: Any, i: int) -> Card:
    member = group.members[i]
    kept = i == group.keep
    note = f"{member.size:,} bytes" + ("" if kept else f" · similarity {group.scores[i]:.3f}")
    return Card(title=display_path(member.path), thumb=thumbnail(member.path), note=note,
                flags=("kept",) if kept else ())
