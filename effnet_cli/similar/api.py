"""``effnet_cli.Index``: build, update, search and dedupe an index of images from Python."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from effnet_cli.errors import InputError
from effnet_cli.output import make_dir
from effnet_cli.output.targets import check_dir
from effnet_cli.records.results import EmbedBatch
from effnet_cli.scale.spec import EngineSpec
from effnet_cli.similar.ann import wanted
from effnet_cli.similar.build import DEFAULT_CHECKPOINT, UpdateSummary, update_index
from effnet_cli.similar.features import DEFAULT_FEATURES, embed_images, feature_dim
from effnet_cli.similar.groups import Group, default_threshold, find_groups
from effnet_cli.similar.query import QueryResult, approximate_of, index_settings, search_index, spec_of
from effnet_cli.similar.store import IndexWriter, StoredIndex, index_lock, is_index, may_write, read_index

__all__ = ["Index"]


class Index:
    """An index of images on disk (a directory), kept up to date incrementally.

    >>> index = Index.build(["photos/"], "photos.index")      # doctest: +SKIP
    >>> index.search(["query.jpg"], k=5)[0].hits[0].path      # doctest: +SKIP
    >>> [g.removable for g in index.dedupe()]                  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str], *, device: str = "cpu", backend: str = "torch",
                 batch_size: int = 16, workers: int = 0) -> None:
        self.directory = Path(directory)
        self.device, self.backend, self.batch_size, self.workers = device, backend, batch_size, workers
        self._stored: StoredIndex = read_index(self.directory)
        self._engine: Any = None
        self.last_update: UpdateSummary | None = None

    @classmethod
    def build(cls, images: Iterable[str | os.PathLike[str]], directory: str | os.PathLike[str], *,
              model: str = "lite0", features: str = DEFAULT_FEATURES, dtype: str = "float32", device: str = "cpu",
              backend: str = "torch",
              batch_size: int = 16, workers: int = 0, use_hash: bool = False,
              checkpoint: int = DEFAULT_CHECKPOINT) -> Index:
        """Index ``images`` (files or directories, recursed) into ``directory``, or update the index there.

        An existing index made with another model or dtype is refused (:class:`InputError`); a directory
        that holds other files is refused too.
        """
        directory = Path(directory)
        if not may_write(directory):
            check_dir(directory, "directory")
        from effnet_cli.data import DEFAULT_MAX_PIXELS

        # As the command line names it (a local directory made absolute, the default pixel limit), so an index
        # built here can be updated by `effnet index` and the other way round.
        name = os.path.abspath(model) if os.path.exists(model) else model
        spec = EngineSpec(name=name, dtype=dtype, draft=False, max_pixels=DEFAULT_MAX_PIXELS, backend=backend,
                          batch_size=batch_size)
        engine = spec.build(device)
        with index_lock(make_dir(directory)):
            stored = read_index(directory) if is_index(directory) else None
            if stored is None:
                IndexWriter(directory, index_settings(engine, spec, features), feature_dim(engine, features),
                            0).commit([], [])
                stored = read_index(directory)
            index = cls(directory, device=device, backend=backend, batch_size=batch_size, workers=workers)
            index._engine = engine
            index.last_update = index._update(images, use_hash=use_hash, checkpoint=checkpoint)
        return index

    def _update(self, images: Iterable[str | os.PathLike[str]], *, use_hash: bool,
                checkpoint: int = DEFAULT_CHECKPOINT) -> UpdateSummary:
        from effnet_cli.data import discover_inputs

        paths = discover_inputs([os.fspath(p) for p in images])
        engine = self._embedder_engine()
        settings = index_settings(engine, spec_of(self._stored.settings, self.backend, self.batch_size),
                                  self._stored.settings["features"])
        summary = update_index(self.directory, engine, settings, paths, stored=self._stored,
                               embed_kwargs={"batch_size": self.batch_size, "workers": self.workers},
                               checkpoint=checkpoint, use_hash=use_hash)
        self._stored = read_index(self.directory)
        return summary

    def add(self, images: Iterable[str | os.PathLike[str]], *, use_hash: bool = False) -> UpdateSummary:
        """Embed the new or changed files among ``images`` and drop indexed files that no longer exist."""
        with index_lock(self.directory):
            self._stored = read_index(self.directory)
            self.last_update = self._update(images, use_hash=use_hash)
        return self.last_update

    def remove(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Drop ``paths`` from the index (the files themselves are never touched); how many were indexed."""
        gone = {os.path.abspath(os.fspath(p)) for p in paths}
        with index_lock(self.directory):
            stored = read_index(self.directory)
            keep = [i for i, e in enumerate(stored.entries) if e.path not in gone]
            writer = IndexWriter(self.directory, stored.settings, stored.settings["dim"], stored.generation)
            writer.commit([stored.entries[i] for i in keep], [stored.vectors[keep]] if keep else [],
                          approximate=wanted(len(keep)))
            self._stored = read_index(self.directory)
        return len(stored) - len(keep)

    def __len__(self) -> int:
        return len(self._stored)

    @property
    def paths(self) -> list[str]:
        """The indexed files, in row order."""
        return [e.path for e in self._stored.entries]

    def _embedder_engine(self) -> Any:
        if self._engine is None:
            self._engine = spec_of(self._stored.settings, self.backend, self.batch_size).build(self.device)
        return self._engine

    def _embed(self, paths: Sequence[str]) -> Iterator[EmbedBatch]:
        return embed_images(self._embedder_engine(), paths, self._stored.settings["features"],
                            batch_size=self.batch_size, workers=self.workers)

    def search(self, queries: Iterable[str | os.PathLike[str]], k: int = 10) -> list[QueryResult]:
        """The ``k`` nearest indexed images of each query image (an indexed path uses its stored vector)."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}.")
        approximate, _ = approximate_of(self._stored)  # exact when there is none (small, or faiss missing)
        return search_index(self._stored, [os.fspath(q) for q in queries], k, self._embed, approximate)

    def dedupe(self, threshold: float | None = None, keep: str = "largest") -> list[Group]:
        """Groups of near-duplicate indexed images; ``keep``: largest, oldest or first of each group.

        ``threshold`` (cosine similarity): by default the one the benchmark chose for the index's features.
        """
        if threshold is None:
            threshold = default_threshold(self._stored.settings["features"])
        approximate, _ = approximate_of(self._stored)  # a large index: candidate pairs from its neighbours
        return find_groups(self._stored.vectors, self._stored.entries, threshold=threshold, keep=keep,
                           approximate=approximate)
