"""Writing shards: one writer for embed and classify, one loop that cuts the result stream into shards.

A shard's rows go first to its partial files (array rows, then one record
per input, each batch flushed to disk in that order, so after a kill the
records never name a row the array lacks). When the shard is complete its
files are published (renamed, or written atomically from the records) and
its marker is written last; then the partials are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effnet_cli.output.atomic import (
    atomic_file,
    create_exclusive,
    fsync_file,
    open_partial,
    publish_file,
    write_bytes,
)
from effnet_cli.output.npy import NpyAppender
from effnet_cli.malloc import release_free_memory
from effnet_cli.records.pathtext import PATH_BYTES_FIELD, path_fields
from effnet_cli.records.stream import classify_record
from effnet_cli.scale.shards.job import MARKER_FORMAT, ShardJob
from effnet_cli.scale.shards.plan import Plan, Summary, Todo, recorded_settings, remove_temporaries

__all__ = ["ShardWriter", "write_classify_shards", "write_embed_shards", "write_shards"]

ProgressFn = Callable[[int], None]
FailureFn = Callable[[Any], None]


# Records per parquet row group of a shard's metadata: what the writer holds at a time.
META_GROUP = 2048


def _groups(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """``records`` in lists of ``size`` (the last one shorter)."""
    group: list[dict[str, Any]] = []
    for record in records:
        group.append(record)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _arrow_column(values: list[Any], kind: Any) -> Any:
    """``pyarrow.array(values, kind)`` for int64 and string columns (None allowed in strings), built from
    buffers: ``pyarrow.array`` imports pandas, where installed, to ask whether ``values`` is a pandas
    object, which cost each run that writes parquet ~35 MB and 0.24 s."""
    import pyarrow as pa

    if kind == pa.int64():
        return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(np.asarray(values, dtype="<i8"))])
    valid = np.array([v is not None for v in values], dtype=bool)
    encoded = [v.encode("utf-8") if v is not None else b"" for v in values]
    offsets = np.zeros(len(values) + 1, dtype="<i4")  # a row group stays far below 2 GiB of text
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    nulls = int(len(values) - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(kind, len(values), [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                 null_count=nulls)


def _write_jsonl(target: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` as JSON lines to ``target`` atomically, one record at a time."""
    with atomic_file(target) as fh:
        for record in records:
            fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def _marker(job: ShardJob, todo: Todo, extra: dict[str, Any]) -> bytes:
    shard = todo.shard
    record = {
        "format": MARKER_FORMAT,
        "kind": job.kind,
        "shard": shard.number,
        "partition": str(job.partition),
        "shard_size": job.shard_size,
        "total_inputs": job.total,
        "first_index": shard.indices[0] if len(shard.indices) else None,
        "inputs": len(shard.paths),
        "paths_sha256": shard.fingerprint(),
        "settings": recorded_settings(job),
        **extra,
    }
    return (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # removes a symlink itself, never what it points to


def _clear(job: ShardJob, number: int) -> None:
    """Remove what an earlier unfinished attempt at a shard left: marker, data files, partials, temporaries.

    Only our own names are touched. The ``-o`` target itself is kept until the
    new one replaces it.
    """
    _unlink(job.marker(number))
    targets = list(job.partials(number).values())
    if job.single is None:
        targets += job.files(number).values()
        if job.kind == "embed":  # both metadata formats, whichever an earlier attempt used
            targets += [job.directory / job.shard_name("meta", number, s) for s in (".parquet", ".jsonl")]
    for target in targets:
        _unlink(target)
    remove_temporaries(job, number, targets)


class ShardWriter:
    """Streams one shard (embed or classify) into its partial files and publishes it, marker last."""

    def __init__(self, job: ShardJob, todo: Todo, dim: int | None = None, dtype: Any = None) -> None:
        self.job, self.todo, self.shard = job, todo, todo.shard
        self.partials = job.partials(self.shard.number)
        self.count, self.rows, self.failures = todo.start, todo.rows, todo.failures
        self.array: NpyAppender | None = None
        self.dim, self.dtype = dim, None if dtype is None else np.dtype(dtype).newbyteorder("<")
        if todo.start == 0:
            _clear(job, self.shard.number)
            extra: dict[str, Any] = {"partial": True}
            if job.kind == "embed":
                extra.update(dim=int(dim), dtype=self.dtype.str)
            write_bytes(self.partials["marker"], _marker(job, todo, extra))
            self.records = create_exclusive(self.partials["records"])
            if job.kind == "embed":
                self.array = NpyAppender(self.partials["emb"], dim, dtype)
        else:
            self.records = open_partial(self.partials["records"])
            self.records.truncate(todo.records_bytes)  # drop a record cut short by the kill
            self.records.seek(todo.records_bytes)
            if job.kind == "embed":
                self.array = NpyAppender(self.partials["emb"], dim, dtype, rows=todo.rows, resume=True)

    @property
    def room(self) -> int:
        """Inputs this shard still takes."""
        return len(self.shard.paths) - self.count

    def add(self, results: Sequence[Any], features: np.ndarray | None = None) -> None:
        """Append consecutive inputs; ``features`` are the rows of the successful ones (embed)."""
        if self.array is not None and features is not None and len(features):
            self.array.append(features)
            self.array.flush()
        lines = []
        for result in results:
            index, path = self.shard.indices[self.count], self.shard.paths[self.count]
            if self.job.kind == "embed":
                record: dict[str, Any] = {"index": index, **path_fields(path),
                                          "row": self.rows if result.error is None else None}
                if result.error is not None:
                    record["error"] = result.error
                self.rows += result.error is None
            else:
                fields = {k: v for k, v in classify_record(result).items() if k not in ("path", PATH_BYTES_FIELD)}
                record = {"index": index, **path_fields(path), **fields}
            self.failures += result.error is not None
            self.count += 1
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        self.records.write("".join(lines).encode("utf-8"))
        fsync_file(self.records)

    def _records(self) -> Iterator[dict[str, Any]]:
        """The shard's records, one at a time from its partial file: a shard of 10,000 inputs held as
        dicts at once cost ~15 MB at every shard's end, which a long run's memory kept."""
        with open(self.partials["records"], "rb") as fh:
            for line in fh:  # splits on b"\n" only, never on U+2028 inside a path
                if line.strip():
                    yield json.loads(line)

    def finish(self) -> Summary:
        """Publish the shard's files, then its marker; remove the partials; returns the shard's counts."""
        self.records.close()
        if self.array is not None:
            self.array.close()
        job, number = self.job, self.shard.number
        targets, files, extra = job.files(number), {}, {}
        if job.kind == "classify":
            publish_file(self.partials["records"], targets["pred"])
            files["pred"] = targets["pred"].name
        else:
            extra = {"dim": int(self.dim), "dtype": self.dtype.str}
            if job.single is not None:
                publish_file(self.partials["emb"], targets["emb"])
                manifest = ({k: v for k, v in r.items() if k != "index"} for r in self._records())
                _write_jsonl(targets["manifest"], manifest)
                files = {"emb": targets["emb"].name, "manifest": targets["manifest"].name}
            else:
                if self.rows:
                    publish_file(self.partials["emb"], targets["emb"])
                    self._write_meta(targets["meta"], (r for r in self._records() if r.get("row") is not None))
                    files["emb"], files["meta"] = targets["emb"].name, targets["meta"].name
                if self.failures:
                    _write_jsonl(targets["errors"], (r for r in self._records() if r.get("row") is None))
                    files["errors"] = targets["errors"].name
        extra.update(files=files, rows=self.rows, errors=self.failures)
        write_bytes(job.marker(number), _marker(job, self.todo, extra))
        for path in self.partials.values():
            _unlink(path)
        release_free_memory()  # what publishing took: without this a long run kept the largest shard's end
        return Summary(inputs=self.count, failures=self.failures, rows=self.rows, shards_written=1)

    def _write_meta(self, target: Path, meta: Iterable[dict[str, Any]]) -> None:
        if self.job.meta_format != "parquet":
            _write_jsonl(target, meta)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("index", pa.int64()), ("path", pa.string()), ("path_bytes", pa.string()),
                            ("row", pa.int64())])
        with atomic_file(target) as fh, pq.ParquetWriter(fh, schema) as out:
            # Row groups of META_GROUP records: a whole shard's table at once was ~13 MB more at its end.
            for group in _groups(meta, META_GROUP):
                columns = [_arrow_column([m.get(name) for m in group], schema.field(name).type)
                           for name in schema.names]
                out.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
        pa.default_memory_pool().release_unused()

    def abandon(self) -> None:
        """Stop without publishing (interrupted, or a write failed): the partials stay, so ``--resume``
        continues from them. Closing after a failed write fails again; the first error is the one reported."""
        with contextlib.suppress(OSError):
            self.records.close()
        if self.array is not None:
            with contextlib.suppress(OSError):
                self.array.close()


def _split_at(results: Sequence[Any], features: np.ndarray | None, room: int) -> tuple[Any, Any, Any, Any]:
    """Split a batch after ``room`` results; features split after the successful ones among them."""
    head = results[:room]
    ok = sum(1 for r in head if r.error is None)
    if features is None:
        return head, None, results[room:], None
    return head, features[:ok], results[room:], features[ok:]


def write_shards(plan: Plan, batches: Iterable[Any], *, dim: int | None = None, dtype: Any = None,
                 on_progress: ProgressFn | None = None, on_failure: FailureFn | None = None) -> Summary:
    """Write ``plan.todo`` from the result batches over ``plan.todo_paths`` (in order).

    A batch is an ``EmbedBatch``-like object (``results``, one per input, and
    ``features``, the rows of the successful ones) or, for classify, a list
    of results. Batches may straddle shards. Returns the counts, including
    the shards ``plan`` kept from earlier.
    """
    summary = Summary(inputs=plan.kept_inputs, failures=plan.kept_failures, shards_kept=plan.done_shards)
    todo = iter(plan.todo)
    writer: ShardWriter | None = None
    try:
        for batch in batches:
            if hasattr(batch, "results"):
                results, features = list(batch.results), batch.features
            else:
                results, features = list(batch), None
            count = len(results)
            for result in results:
                if result.error is not None and on_failure is not None:
                    on_failure(result)
            while results:
                if writer is None:
                    item = next(todo, None)
                    if item is None:
                        raise RuntimeError("more results than inputs in the shard plan")
                    writer = ShardWriter(plan.job, item, dim, dtype)
                head, head_feats, results, features = _split_at(results, features, writer.room)
                writer.add(head, head_feats)
                if writer.room == 0:
                    summary.merge(writer.finish())
                    writer = None
            if on_progress is not None:
                on_progress(count)
        # Shards with nothing left to add (a resume killed after their last record, or no inputs at all).
        for item in todo:
            if item.paths:
                raise RuntimeError("the results ended before every input of the shard plan was written")
            summary.merge(ShardWriter(plan.job, item, dim, dtype).finish())
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.abandon()
        raise RuntimeError("the results ended before every input of the shard plan was written")
    return summary


def write_embed_shards(plan: Plan, batches: Iterable[Any], *, dim: int, dtype: Any,
                       on_progress: ProgressFn | None = None, on_failure: FailureFn | None = None) -> Summary:
    """:func:`write_shards` for embed batches."""
    return write_shards(plan, batches, dim=dim, dtype=dtype, on_progress=on_progress, on_failure=on_failure)


def write_classify_shards(plan: Plan, batches: Iterable[Sequence[Any]], *, on_progress: ProgressFn | None = None,
                          on_failure: FailureFn | None = None) -> Summary:
    """:func:`write_shards` for per-batch lists of classify results."""
    return write_shards(plan, batches, on_progress=on_progress, on_failure=on_failure)
