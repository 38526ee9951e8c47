"""classify's machine records: JSON, JSONL, CSV and TSV on a text stream, free of the inference stack.

Paths follow :mod:`effnet_cli.records.pathtext`: ``path`` is the name as valid UTF-8
text, and a name whose bytes are not UTF-8 also gets ``path_bytes`` (the raw
bytes, base64), so every record is valid UTF-8 and names its file exactly.

CSV and TSV have one row per prediction (one row with an ``error`` for an
input that failed) under the header ``path,rank,index,label,score,error,path_bytes``:
``path_bytes`` comes last so that readers of the older six columns keep working,
and it is empty for UTF-8 names. Every field that needs quoting is quoted,
including fields with a carriage return, so Python's :mod:`csv` reader (and any
RFC 4180 reader) gets every path back exactly.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import IO, Any

from effnet_cli.interrupts import interrupts_held
from effnet_cli.records.pathtext import PATH_BYTES_FIELD, path_fields
from effnet_cli.records.results import Result

__all__ = ["CSV_HEADER", "MACHINE_FORMATS", "RecordWriter", "classify_record", "utf8_text"]

MACHINE_FORMATS = ("json", "jsonl", "csv", "tsv")
CSV_HEADER = ("path", "rank", "index", "label", "score", "error", PATH_BYTES_FIELD)


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8 text: characters no UTF-8 encoder accepts (lone surrogates) become U+FFFD.

    Error messages and labels can carry a name that is not UTF-8 (decoded with
    ``surrogateescape``); a record must still be encodable, whatever the name.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # surrogatepass turns every lone surrogate into bytes that decode to U+FFFD ("replace").
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def classify_record(result: Result) -> dict[str, Any]:
    """The JSON record of one classified input: its path fields, then predictions or the error."""
    record: dict[str, Any] = path_fields(result.path)
    if result.error is not None:
        record["error"] = utf8_text(result.error)
        return record
    predictions = []
    for p in result.predictions or []:
        item = p.to_dict()
        item["label"] = utf8_text(item["label"])
        predictions.append(item)
    record["predictions"] = predictions
    return record


class RecordWriter:
    """Streams classify records to a text stream as json, jsonl, csv or tsv.

    Each call to :meth:`write` flushes, so a pipeline sees results batch by batch.
    ``json`` writes one array, opened on the first record and closed by :meth:`close`.
    Everything written is valid UTF-8 text; the caller makes the stream encode it
    as UTF-8 (the command line does, whatever the locale).
    """

    def __init__(self, stream: IO[str], fmt: str) -> None:
        if fmt not in MACHINE_FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.stream, self.fmt, self.count = stream, fmt, 0
        self._rows: tuple[Any, Any] | None = None
        if fmt in ("csv", "tsv"):
            delimiter = "," if fmt == "csv" else "\t"
            # The csv module quotes a field with "\r" only when "\r" is in the line terminator,
            # and rows end in "\n" here; rows with a "\r" anywhere go through a writer that quotes
            # every field, which any CSV reader accepts and which keeps the other rows minimal.
            self._rows = (csv.writer(stream, delimiter=delimiter, lineterminator="\n"),
                          csv.writer(stream, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL))
            self._row(list(CSV_HEADER))

    def _row(self, fields: list[Any]) -> None:
        assert self._rows is not None  # internal: only csv/tsv writers have row writers
        minimal, quote_all = self._rows
        needs_all = any(isinstance(f, str) and "\r" in f for f in fields)
        (quote_all if needs_all else minimal).writerow(fields)

    def write(self, results: Iterable[Result]) -> None:
        """Write the records of one batch and flush; Ctrl-C waits until the batch is written and counted."""
        with interrupts_held():
            self._write(results)

    def _write(self, results: Iterable[Result]) -> None:
        for result in results:
            if self.fmt == "jsonl":
                self.stream.write(json.dumps(classify_record(result), ensure_ascii=False) + "\n")
            elif self.fmt == "json":
                self.stream.write(("[\n" if self.count == 0 else ",\n")
                                  + json.dumps(classify_record(result), ensure_ascii=False))
            else:
                fields = path_fields(result.path)
                path, raw = fields["path"], fields.get(PATH_BYTES_FIELD, "")
                if result.error is not None:
                    self._row([path, "", "", "", "", utf8_text(result.error), raw])
                for p in result.predictions or []:
                    self._row([path, p.rank, p.index, utf8_text(p.label), f"{p.score:.6f}", "", raw])
            self.count += 1
        self.stream.flush()

    def close(self) -> None:
        """Finish the document (closes the JSON array)."""
        with interrupts_held():
            if self.fmt == "json":
                self.stream.write("[]\n" if self.count == 0 else "\n]\n")
            self.stream.flush()
