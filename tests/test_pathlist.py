"""PathList, the compact path sequence of long runs: it must behave as the list of str it replaces."""

from __future__ import annotations

import os
import pickle
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from effnet_cli.data.pathlist import PathList, compact, concat

# Names as a POSIX file system gives them: any bytes but NUL and "/" in a component, decoded as Python
# decodes file names (undecodable bytes become lone surrogates), so every one must come back unchanged.
names = st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b).map(os.fsdecode)
path_lists = st.lists(names, max_size=30)
slices = st.builds(slice, st.none() | st.integers(-40, 40), st.none() | st.integers(-40, 40),
                   st.none() | st.integers(-5, 5).filter(bool))


@given(path_lists, slices)
@settings(max_examples=200, deadline=None)
def test_reads_and_slices_as_the_list(paths: list[str], cut: slice) -> None:
    compacted = PathList.from_iterable(paths)
    assert len(compacted) == len(paths) and list(compacted) == paths
    assert [compacted[i] for i in range(-len(paths), len(paths))] == [paths[i] for i in range(-len(paths), len(paths))]
    view = compacted[cut]
    assert isinstance(view, PathList) and list(view) == paths[cut]
    assert list(view[::-1]) == paths[cut][::-1]  # a view of a view
    assert pickle.loads(pickle.dumps(view)) == paths[cut]


def test_index_errors_and_equality_as_a_list() -> None:
    compacted = PathList.from_iterable(["a", "b"])
    with pytest.raises(IndexError):
        compacted[2]
    with pytest.raises(IndexError):
        compacted[-3]
    assert compacted == ["a", "b"] and compacted == ("a", "b") and compacted != ["a"]
    assert compact(compacted) is compacted and compact(["x"]) == ["x"]


@given(path_lists, st.lists(st.integers(0, 30), max_size=4))
@settings(max_examples=100, deadline=None)
def test_concat_of_views_is_the_joined_list(paths: list[str], cuts: list[int]) -> None:
    compacted = PathList.from_iterable(paths)
    bounds = sorted({0, len(paths), *[min(c, len(paths)) for c in cuts]})
    pieces = [(a, b) for a, b in zip(bounds, bounds[1:])]
    kept = pieces[::2]  # with gaps, as the shard planner's todo list has where shards are done
    joined = concat([compacted[a:b] for a, b in kept])
    assert list(joined) == [p for a, b in kept for p in paths[a:b]]
    whole = concat([compacted[a:b] for a, b in pieces])
    assert list(whole) == paths
    assert concat([["x"], compacted[:1]]) == ["x", *paths[:1]]  # a plain list joined in: a plain list


def test_a_view_pickles_only_its_own_paths() -> None:
    """A device worker handed one partition gets that partition's bytes, not the whole run's."""
    compacted = PathList.from_iterable(f"/photos/{i:06d}.jpg" for i in range(10_000))
    whole, part = len(pickle.dumps(compacted)), len(pickle.dumps(compacted[:100]))
    assert part < whole / 20


@pytest.mark.skipif(sys.platform != "linux", reason="measures with /proc-backed tracemalloc sizes")
def test_holds_a_long_list_in_a_fraction_of_a_list_of_str() -> None:
    import tracemalloc

    tracemalloc.start()
    as_list = [f"/data/photos/d{i // 1000:03d}/IMG_{i:06d}.jpg" for i in range(50_000)]
    list_bytes = tracemalloc.get_traced_memory()[0]
    compacted = PathList.from_iterable(as_list)
    del as_list
    compact_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(compacted) == 50_000
    assert compact_bytes < list_bytes / 2, (compact_bytes, list_bytes)
