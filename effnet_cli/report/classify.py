"""``classify --report PAGE.html``: a card per input (thumbnail, top-k bars), failed and least confident first."""

from __future__ import annotations

import os
from collections.abc import Iterable

from effnet_cli.data.limits import DEFAULT_DECODE_TIMEOUT
from effnet_cli.records.pathtext import display_path
from effnet_cli.records.results import Result
from effnet_cli.report.page import Bar, Card, Page, Section, thumbnail, write_page

LOW_CONFIDENCE = 0.5  # a top-1 score below this is marked "low" (the model gives the rest to other classes)


class ClassifyReport:
    """Collects classify's results as they stream out, then writes the page; records are not changed.

    Each card keeps a thumbnail of a few kilobytes, not the image, so memory grows by that much per input.
    """

    def __init__(self, target: str | os.PathLike[str], *, model: str, max_pixels: int | None = None,
                 time_limit: float | None = DEFAULT_DECODE_TIMEOUT) -> None:
        self.target, self.model, self.max_pixels, self.time_limit = target, model, max_pixels, time_limit
        self._cards: list[tuple[float, int, Card]] = []  # (sort key, input position, card)

    def add(self, results: Iterable[Result]) -> None:
        """One batch of results, in input order."""
        for result in results:
            position = len(self._cards)
            self._cards.append((_order(result), position, _card(result, self.max_pixels, self.time_limit)))

    def write(self) -> None:
        """Publish the page: failed inputs first, then by rising top-1 score."""
        cards = [card for _, _, card in sorted(self._cards, key=lambda item: (item[0], item[1]))]
        failed = sum("failed" in card.flags for card in cards)
        low = sum("low" in card.flags for card in cards)
        keys = sorted({card.key for card in cards})
        summary = [f"{len(cards)} input{'s' if len(cards) != 1 else ''}", f"{failed} failed",
                   f"{low} below {LOW_CONFIDENCE:.0%} confidence", f"model {self.model}"]
        page = Page(title="effnet classify", summary=summary, filter_keys=keys,
                    sections=[Section(heading="Failed and least confident first", cards=cards)])
        write_page(self.target, page)


def _order(result: Result) -> float:
    """Failed inputs sort first (-1), then by the top-1 score."""
    if not result.ok or not result.predictions:
        return -1.0
    return result.predictions[0].score


def _card(result: Result, max_pixels: int | None, time_limit: float | None) -> Card:
    title = display_path(result.path)
    if not result.ok:
        return Card(title=title, thumb=None, note=result.error, flags=("failed",), key="(failed)")
    predictions = result.predictions or []
    top = predictions[0] if predictions else None
    low = top is None or top.score < LOW_CONFIDENCE
    return Card(title=title, thumb=thumbnail(result.path, max_pixels, time_limit),
                bars=[Bar(p.label, p.score) for p in predictions], flags=("low",) if low else (),
                key=top.label if top is not None else "(below --threshold)")
