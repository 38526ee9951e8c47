"""Sharded outputs: partitions cover every input once, shard files read back (numpy, embedding-reader), resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from effnet_cli.data import discover_inputs
from effnet_cli.scale.shards import Partition, parse_shard, read_embeddings, read_predictions
from tests.cli_helpers import effnet, run


def _images(directory: Path, n: int, broken: tuple[int, ...] = ()) -> list[Path]:
    """``n`` small distinct PNGs, the ``broken`` ones replaced by bytes that are not an image."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = directory / f"img{i:03d}.png"
        if i in broken:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------- partitions


@given(total=st.integers(0, 60), count=st.integers(1, 4))
def test_partitions_cover_every_input_exactly_once(total: int, count: int) -> None:
    items = [f"p{i}" for i in range(total)]
    parts = [Partition(i, count).select(items) for i in range(count)]
    chosen = [p for part in parts for p in part]
    assert sorted(chosen) == sorted(items) and len(chosen) == len(set(chosen))  # no padding, no duplicates
    for i, part in enumerate(parts):  # index ≡ I (mod N), in input order
        assert part == [items[k] for k in range(total) if k % count == i]
        assert list(Partition(i, count).positions(total)) == [k for k in range(total) if k % count == i]


def test_partitions_of_the_discovered_list_cover_a_real_folder(tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 23)
    everything = discover_inputs([str(tmp_path / "imgs")])
    for count in range(1, 5):
        union = [p for i in range(count) for p in Partition(i, count).select(discover_inputs([str(tmp_path / "imgs")]))]
        assert sorted(union) == sorted(everything) and len(union) == len(everything)


def test_device_split_of_a_partition_is_again_a_partition() -> None:
    items = list(range(50))
    outer = Partition(1, 3)
    mine = outer.select(items)
    for i, inner in enumerate(outer.split(2)):
        assert inner == Partition(1 + 3 * i, 6)
        assert mine[i::2] == inner.select(items)


@pytest.mark.parametrize("text", ["4/4", "-1/3", "1", "a/b", "0/0", "1/2/3"])
def test_bad_shard_specs_are_usage_errors(text: str) -> None:
    from effnet_cli.errors import InputError

    with pytest.raises(InputError, match="--shard"):
        parse_shard(text)


def test_shard_spec_parses() -> None:
    assert parse_shard("3/4") == Partition(3, 4) and parse_shard(" 0 / 1 ") == Partition(0, 1)
    assert Partition(3, 4).tag == "p003of004_" and Partition(0, 1).tag == ""


# -------------------------------------------------------------- shard layout


def test_embed_shards_read_back_with_numpy_and_embedding_reader(b0_small_dir: Path, tmp_path: Path) -> None:
    # img003..img005 all fail: shard 1 (of size 3) has no embedding at all, the case that would
    # misalign embedding-reader if an empty .npy or its metadata were written.
    paths = _images(tmp_path / "imgs", 8, broken=(1, 3, 4, 5))
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "0"]
    assert run(["embed", *common, "-o", str(tmp_path / "ref.npy")]).exit_code == 1
    out = tmp_path / "shards"
    res = run(["embed", *common, "--output-dir", str(out), "--shard-size", "3"])
    assert res.exit_code == 1 and f"{paths[4]}: not an image (text file)" in res.stderr

    names = sorted(p.name for p in out.iterdir())
    assert names == ["_done_emb_00000.json", "_done_emb_00001.json", "_done_emb_00002.json",
                     "emb_00000.npy", "emb_00002.npy", "errors_00000.jsonl", "errors_00001.jsonl",
                     "meta_00000.parquet", "meta_00002.parquet"]
    first = np.load(out / "emb_00000.npy")  # a standard .npy: 2-D little-endian float32
    assert first.shape == (2, 1280) and first.dtype == np.dtype("<f4")

    reference = np.load(tmp_path / "ref.npy")
    manifest = [json.loads(line) for line in (tmp_path / "ref.jsonl").read_text().splitlines()]
    array, records = read_embeddings(out)
    np.testing.assert_array_equal(array, reference)  # same batches, same numbers
    assert [(r["path"], r["row"], r.get("error")) for r in records] == \
           [(m["path"], m["row"], m.get("error")) for m in manifest]
    assert [r["index"] for r in records] == list(range(8))

    from embedding_reader import EmbeddingReader

    reader = EmbeddingReader(str(out), file_format="parquet_npy", meta_columns=["path", "index"],
                             metadata_folder=str(out))
    assert reader.count == 4 and reader.dimension == 1280
    got = list(reader(batch_size=100, show_progress=False))
    (embeddings, meta), = got
    np.testing.assert_array_equal(embeddings, reference)
    assert list(meta["path"]) == [m["path"] for m in manifest if m["row"] is not None]
    assert list(meta["index"]) == [0, 2, 6, 7]
    errors = [json.loads(line) for f in sorted(out.glob("errors_*.jsonl")) for line in f.read_text().splitlines()]
    assert [e["index"] for e in errors] == [1, 3, 4, 5] and all(e["row"] is None for e in errors)


def test_float16_shards(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "half"
    res = run(["embed", str(photos[0]), str(photos[1]), "--model", str(b0_small_dir), "--output-dir", str(out),
               "--dtype", "float16"])
    assert res.exit_code == 0, res.stderr
    assert np.load(out / "emb_00000.npy").dtype == np.dtype("<f2")


def test_shard_jobs_into_one_directory_equal_a_single_run(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    inputs = [str(p) for p in photos] + [str(tmp_path / "missing.jpg")]
    common = ["--model", str(b0_small_dir), "-j", "0", "-k", "3"]
    single = tmp_path / "single"
    assert run(["classify", *inputs, *common, "--output-dir", str(single)]).exit_code == 1
    split = tmp_path / "split"
    for i in range(3):  # as a Slurm array would: three independent jobs, one directory
        run(["classify", *inputs, *common, "--output-dir", str(split), "--shard", f"{i}/3", "--shard-size", "1"])
    assert sorted(p.name for p in split.glob("pred_*")) == [  # 6 inputs: 2 per job, 1 per shard
        f"pred_p00{i}of003_0000{k}.jsonl" for i in range(3) for k in range(2)]
    whole, parts = read_predictions(single), read_predictions(split)
    assert [r["index"] for r in parts] == list(range(len(inputs)))  # every input once, none twice
    assert [r["path"] for r in parts] == inputs
    assert parts[-1]["error"] == "no such file"
    for a, b in zip(whole, parts):
        assert a.keys() == b.keys()
        if "predictions" in a:
            assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
            np.testing.assert_allclose([p["score"] for p in a["predictions"]],
                                       [p["score"] for p in b["predictions"]], rtol=1e-5)


def test_shard_filters_the_single_file_modes_too(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    res = run(["classify", *map(str, photos), "--model", str(b0_small_dir), "-f", "jsonl", "--shard", "1/2", "-j", "0"])
    assert [json.loads(line)["path"] for line in res.stdout.splitlines()] == [str(p) for p in photos[1::2]]


# ------------------------------------------------------------------- resume


def test_existing_shards_need_resume_and_resume_keeps_finished_ones(b0_small_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 6, broken=(2,))
    out = tmp_path / "out"
    # -b equal to the shard size: a redone shard is batched as before, so its numbers are bit-identical.
    common = ["embed", str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-j", "0", "-b", "2",
              "--output-dir", str(out), "--shard-size", "2"]
    assert run(common).exit_code == 1
    before = read_embeddings(out)

    again = run(common)
    assert again.exit_code == 2 and "add --resume" in again.stderr  # never silently overwritten

    # Shard 1's array is damaged and shard 2's marker is gone: both are redone, shard 0 is kept.
    kept = (out / "emb_00000.npy").stat().st_mtime_ns
    (out / "emb_00001.npy").write_bytes(b"\x93NUMPY garbage")
    (out / "_done_emb_00002.json").unlink()
    resumed = run([*common, "--resume"])
    assert resumed.exit_code == 1, resumed.stderr  # the broken input is still reported in the status
    assert (out / "emb_00000.npy").stat().st_mtime_ns == kept
    after = read_embeddings(out)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1] == before[1]

    done = run([*common, "--resume"])
    assert done.exit_code == 1 and "already finished" in done.stderr


def test_resume_refuses_other_settings_or_another_split(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["embed", str(photos[0]), str(photos[1]), "--model", str(b0_small_dir), "-j", "0", "--output-dir", str(out)]
    assert run(base).exit_code == 0
    other = run([*base, "--resume", "--pool", "max"])
    assert other.exit_code == 2 and 'pool="mean" there, "max" now' in other.stderr
    split = run([*base, "--resume", "--shard", "0/2"])
    assert split.exit_code == 2 and "split into 1 partition" in split.stderr
    more = run(["embed", *map(str, photos), "--model", str(b0_small_dir), "-j", "0", "--output-dir", str(out), "--resume"])
    assert more.exit_code == 2 and "same input list" in more.stderr


@pytest.mark.parametrize("args, message", [
    (["--shard-size", "4"], "--output-dir"),
    (["--devices", "cpu:2"], "--output-dir"),
    (["--engine", "ray"], "--output-dir"),
    (["--output-dir", "D", "-o", "x.npy"], "exactly one of"),
    (["--output-dir", "D", "--ray-actors", "2"], "only applies with --engine ray"),
    (["--output-dir", "D", "--devices", "cpu:2", "--device", "cpu"], "not both"),
    (["--output-dir", "D", "--devices", "tpu:0"], "--devices takes"),
    (["--output-dir", "D", "--devices", "cpu:0"], "worker count"),
    (["--output-dir", "D", "--shard", "2/2"], "--shard"),
])
def test_scale_usage_errors_exit_2(b0_small_dir: Path, photos: list[Path], tmp_path: Path, args, message) -> None:
    args = [str(tmp_path / a) if a == "D" else a for a in args]
    res = run(["embed", str(photos[0]), "--model", str(b0_small_dir), *args])
    assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@pytest.mark.slow
def test_sigkilled_sharded_run_resumes_to_the_uninterrupted_result(b0_small_dir: Path, tmp_path: Path) -> None:
    _images(tmp_path / "imgs", 24, broken=(9,))
    common = [str(tmp_path / "imgs"), "--model", str(b0_small_dir), "-b", "2", "-j", "0", "--shard-size", "2"]
    assert run(["embed", *common, "--output-dir", str(tmp_path / "ref")]).exit_code == 1

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", "embed", *common, "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("_done_*"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob("_done_*")))
    assert 3 <= finished < 12, "killed mid-run"

    resumed = effnet("embed", *common, "--output-dir", str(out), "--resume")
    assert resumed.returncode == 1, resumed.stderr.decode()  # img009 is broken in both runs
    ref_array, ref_records = read_embeddings(tmp_path / "ref")
    array, records = read_embeddings(out)
    assert records == ref_records  # nothing lost, nothing twice
    np.testing.assert_array_equal(array, ref_array)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert not list(out.glob(".*.part"))  # the killed run's temporaries are gone


# ----------------------------------------------------------------- parquet metadata columns

def test_metadata_columns_equal_pyarrows_own_and_need_no_pandas() -> None:
    """The shard writer builds its parquet columns from buffers; they must equal ``pyarrow.array``'s,
    None, empty and non-ASCII names included, and writing them must not import pandas (35 MB a run)."""
    code = """
import io, sys
import pyarrow as pa, pyarrow.parquet as pq
from effnet_cli.scale.shards.writer import _arrow_column
cols = {"index": ([0, 7, 2**40], pa.int64()), "path": (["a", "", "é 😀\\nx", "[b]"], pa.string()),
        "path_bytes": ([None, "YWJj", None], pa.string()), "none": ([None, None], pa.string()), "empty": ([], pa.string())}
built = {name: _arrow_column(values, kind) for name, (values, kind) in cols.items()}
for name, array in built.items():
    array.validate(full=True)
    assert array.to_pylist() == cols[name][0], name
schema = pa.schema([("index", pa.int64()), ("path", pa.string())])
buf = io.BytesIO()
with pq.ParquetWriter(buf, schema) as out:
    out.write_batch(pa.RecordBatch.from_arrays([built["index"], built["path"][:3]], schema=schema))
assert "pandas" not in sys.modules, "writing metadata imported pandas"
same = {name: pa.array(values, kind) for name, (values, kind) in cols.items()}
assert all(built[name].equals(same[name]) for name in cols)
back = pq.ParquetFile(io.BytesIO(buf.getvalue()), pre_buffer=False).read(use_threads=False)
assert back.column("path").to_pylist() == cols["path"][0][:3]
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
