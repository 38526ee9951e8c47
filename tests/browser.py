"""Headless Chromium for the report tests: the DOM after the page's script ran, its console, a screenshot.

Debian's ``chromium`` package (``.ci/run`` installs it when missing). Console messages reach stderr
through Chromium's own logging (``--enable-logging=stderr``, lines with ``CONSOLE``); the report pages
log nothing, so any such line is a failure (an uncaught exception is one).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--enable-logging=stderr", "--v=0", "--window-size=1280,900"]


def chromium() -> str:
    """The browser's executable; the test skips, saying why, when none is installed."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run installs it)")


@dataclass
class Rendered:
    """What the browser made of a page."""

    dom: str  # the serialised DOM after the page's script ran
    console: list[str]  # console messages and uncaught errors
    seconds: float  # the browser's whole run: start, load, script, serialisation


def render(page: Path, *, budget_ms: int = 1000, timeout: float = 60, fragment: str = "") -> Rendered:
    """Open ``page`` (with ``#fragment``, if given) in headless Chromium and return its DOM and console."""
    started = time.monotonic()
    url = page.as_uri() + (f"#{fragment}" if fragment else "")
    done = subprocess.run([chromium(), *FLAGS, f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=timeout, cwd=page.parent)
    seconds = time.monotonic() - started
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(dom=done.stdout, console=console, seconds=seconds)


def screenshot(page: Path, target: Path, *, budget_ms: int = 2000, timeout: float = 60) -> Path:
    """A 1280×900 PNG of ``page`` once its lazy thumbnails had time to load."""
    subprocess.run([chromium(), *FLAGS, f"--virtual-time-budget={budget_ms}", f"--screenshot={target}",
                    page.as_uri()], capture_output=True, timeout=timeout, cwd=page.parent, check=True)
    return target


class Cards(HTMLParser):
    """The cards of a report page's DOM: their classes, titles, bar labels and notes."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self._field: str | None = None
        self._group = 0  # groups seen so far (dedupe pages: a card's group is the last one opened)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if tag == "div" and "group" in classes:
            self._group += 1
        elif tag == "article" and "card" in classes:
            self.cards.append({"classes": classes, "title": "", "labels": [], "note": "", "key": found.get("data-key"),
                               "hidden": "hidden" in found, "thumb": False, "shown": False,
                               "group": self._group})
        elif self.cards and tag == "img":
            self.cards[-1]["thumb"] = True
            self.cards[-1]["shown"] = (found.get("src") or "").startswith("data:image/")  # set by the page's script
        elif self.cards and "title" in classes:
            self.cards[-1]["title"] = found.get("title", "")
        elif self.cards and "label" in classes:
            self._field = "labels"
        elif self.cards and "note" in classes:
            self._field = "note"

    def handle_data(self, data: str) -> None:
        if self._field == "labels":
            self.cards[-1]["labels"].append(data)
        elif self._field == "note":
            self.cards[-1]["note"] += data
        self._field = None


def cards_of(dom: str) -> list[dict]:
    """Every card in ``dom``."""
    parser = Cards()
    parser.feed(dom)
    return parser.cards


def ready_ms(dom: str) -> int | None:
    """When the page's script finished, in ms after navigation began (the ``data-ready-ms`` it sets)."""
    found = re.search(r'data-ready-ms="(\d+)"', dom)
    return int(found.group(1)) if found else None


def distinct_colours(png: Path) -> int:
    """How many colours a screenshot has (a blank page has one or two)."""
    from PIL import Image

    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
