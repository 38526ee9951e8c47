"""Sharded outputs: deterministic partitions of the input list, shard files that resume.

A large run writes a directory of fixed-size shards instead of one file:

    DIR/emb_00000.npy          features of the inputs of shard 0 that were embedded (rows in input order)
    DIR/meta_00000.parquet     one row per embedding row: index, path, path_bytes, row  (--meta-format jsonl: .jsonl)
    DIR/errors_00000.jsonl     one line per input of shard 0 that failed: index, path, row (null), error
    DIR/_done_emb_00000.json   completion marker, written last
    DIR/pred_00000.jsonl       (classify) one record per input: index, path, predictions or error
    DIR/_done_pred_00000.json  (classify) completion marker

``embed -o OUT.npy`` is the one-shard case of the same machinery (``OUT.npy``
plus its manifest ``OUT.jsonl``), with the same partials, markers, settings
check and lock.

Shard ``k`` holds the inputs ``[k*N, (k+1)*N)`` of the (partition's) input
list. A :class:`Partition` ``I/N`` (``--shard I/N``, one per device with
``--devices``) is the inputs whose position in the full list is ``≡ I (mod
N)``; its files carry the partition in their names (``emb_p001of004_00000.npy``)
so independent jobs can share one directory. Every record carries ``index``,
the input's position in the full list, and its path as
:mod:`effnet_cli.records.pathtext` writes paths.

Why errors live beside the metadata rather than in it: embedding-reader's
``parquet_npy`` format pairs ``meta_*.parquet`` row ``i`` with ``emb_*.npy``
row ``i`` and skips ``.npy`` files with no rows without skipping their
metadata file. So the metadata holds exactly the embedded inputs, a shard
whose inputs all failed writes no ``emb``/``meta`` pair at all, and failures
go to ``errors_*.jsonl``.

Modules: :mod:`.partition` (which inputs), :mod:`.job` (file names),
:mod:`.plan` (what is finished, what resumes, the settings check),
:mod:`.writer` (one shard writer, one loop), :mod:`.run` (one engine),
:mod:`.read` (reading back). Nothing here prints: progress and failures go to
callbacks.
"""

from effnet_cli.scale.shards.job import (
    DEFAULT_SHARD_SIZE,
    META_FORMATS,
    Shard,
    ShardJob,
    lock_path,
)
from effnet_cli.scale.shards.partition import Partition, parse_shard
from effnet_cli.scale.shards.plan import Plan, Summary, Todo, plan_shards
from effnet_cli.scale.shards.read import read_embeddings, read_jsonl, read_predictions
from effnet_cli.scale.shards.run import (
    check_meta_format,
    classify_into_shards,
    embed_into_shards,
    hold_lock,
    lock_output,
    parquet_available,
)
from effnet_cli.scale.shards.writer import (
    ShardWriter,
    write_classify_shards,
    write_embed_shards,
    write_shards,
)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "META_FORMATS",
    "Partition",
    "parse_shard",
    "ShardJob",
    "Shard",
    "Todo",
    "Plan",
    "Summary",
    "plan_shards",
    "ShardWriter",
    "write_shards",
    "embed_into_shards",
    "classify_into_shards",
    "write_embed_shards",
    "write_classify_shards",
    "read_embeddings",
    "read_predictions",
    "read_jsonl",
    "lock_output",
    "hold_lock",
    "lock_path",
    "parquet_available",
    "check_meta_format",
]
