"""Flat records (one dict per row, fixed columns) as json, jsonl, csv or tsv: search hits and dedupe members.

The same rules as classify's :mod:`effnet_cli.records.stream`: valid UTF-8 text, records split on ``\\n``,
one flush per :meth:`RowWriter.write`, and a JSON array opened on the first record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from effnet_cli.records.stream import MACHINE_FORMATS

__all__ = ["RowWriter"]


class RowWriter:
    """Writes dict records; csv/tsv take ``columns`` (a missing field is an empty cell), json/jsonl the dicts."""

    def __init__(self, stream: IO[str], fmt: str, columns: Sequence[str]) -> None:
        if fmt not in MACHINE_FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.stream, self.fmt, self.columns, self.count = stream, fmt, list(columns), 0
        self._csv = None
        if fmt in ("csv", "tsv"):
            delimiter = "," if fmt == "csv" else "\t"
            # As in classify's records: a row with a "\r" goes through a writer that quotes every field.
            self._csv = (csv.writer(stream, delimiter=delimiter, lineterminator="\n"),
                         csv.writer(stream, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL))
            self._csv[0].writerow(self.columns)

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write records and flush."""
        for record in records:
            if self.fmt == "jsonl":
                self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            elif self.fmt == "json":
                self.stream.write(("[\n" if self.count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
            else:
                assert self._csv is not None  # internal: csv/tsv have a writer
                cells = ["" if record.get(c) is None else record[c] for c in self.columns]
                needs_all = any(isinstance(c, str) and "\r" in c for c in cells)
                self._csv[needs_all].writerow(cells)
            self.count += 1
        self.stream.flush()

    def close(self) -> None:
        """Finish the document (closes the JSON array)."""
        if self.fmt == "json":
            self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()
