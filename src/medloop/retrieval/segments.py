"""The index as read: immutable segments (ids, vectors, FAISS, term counts, BM25 postings) and the published
versions that list them, less the chunks removed since (`dead`). Layout under `index/`:
  segments/<name>/  ids.npy, embeddings.npy, dense.faiss, terms.txt, doc_terms.npz, postings.npz (immutable)
  v<N>/             meta.json (the segments of this version), dead.npy (chunk ids removed since)
  CURRENT           the live version
A reader (a running server) loads a version's segments once and, after an ingest, only the new ones.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from scipy import sparse

from medloop.retrieval import bm25, dense
from medloop.retrieval.dense import IndexParams

LAYOUT = 2  # segments; 1 was one folder per version


class Segment:
    """An immutable slice of the index: ids, vectors, the dense index and the term counts of some chunks.
    A segment is written once and never changed; versions list the segments they are made of, so adding a
    document writes one small segment instead of rewriting a million chunks. Parts load on first use: a writer
    reads only `ids`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.name = folder.name
        self.ids = np.load(folder / "ids.npy")

    def __len__(self) -> int:
        return len(self.ids)

    def removed(self, dead: np.ndarray) -> np.ndarray:
        """Which of this segment's chunks are among the removed ones (`dead`, sorted)."""
        return in_sorted(self.ids, dead)

    @functools.cached_property
    def dense(self) -> faiss.Index:
        return faiss.read_index(str(self.folder / "dense.faiss"))

    @functools.cached_property
    def terms(self) -> list[str]:
        text = (self.folder / "terms.txt").read_text()
        return text.split("\n") if text else []

    @functools.cached_property
    def vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.terms)}

    @functools.cached_property
    def doc_terms(self) -> sparse.csr_matrix:
        """Row i: how often each term occurs in chunk ids[i]."""
        return sparse.load_npz(self.folder / "doc_terms.npz").tocsr()

    @functools.cached_property
    def postings(self) -> sparse.csc_matrix:
        """Column j: the rows holding term j, each with BM25's term-frequency part (see `bm25_postings`)."""
        return sparse.load_npz(self.folder / "postings.npz").tocsc()

    def embeddings(self) -> np.ndarray:
        return np.load(self.folder / "embeddings.npy", mmap_mode="r")

    def tune(self, params: IndexParams) -> None:
        dense.tune(self.dense, params)

    def load(self) -> Segment:
        """Everything a search touches, read now (a reader loads under its lock, not on a request's time)."""
        for part in ("dense", "vocab", "postings", "doc_terms"):
            getattr(self, part)
        return self

    def df(self, token: str) -> int:
        j = self.vocab.get(token)
        return 0 if j is None else int(self.postings.indptr[j + 1] - self.postings.indptr[j])

    def token_set(self, row: int) -> set[str]:
        m = self.doc_terms
        return {self.terms[j] for j in m.indices[m.indptr[row] : m.indptr[row + 1]]}



@dataclass
class LoadedIndex:
    """One published version: its segments, less the chunks removed since a segment was written (`dead`)."""

    version: int
    meta: dict
    segments: list[Segment]
    dead: np.ndarray  # sorted chunk ids

    def __post_init__(self):
        self._alive = [~s.removed(self.dead) for s in self.segments]
        self._dead_in = [len(s) - int(a.sum()) for s, a in zip(self.segments, self._alive, strict=True)]
        self.count = sum(len(s) for s in self.segments) - sum(self._dead_in)  # chunks a search can return

    def live_ids(self) -> np.ndarray:
        parts = [s.ids[a] for s, a in zip(self.segments, self._alive, strict=True)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def df(self, token: str) -> int:
        """How many chunks hold `token` (read off the posting lists: nothing extra is stored)."""
        return sum(s.df(token) for s in self.segments)

    def token_set(self, chunk_id: int) -> set[str]:
        for s in self.segments:  # a segment's ids are sorted
            row = int(np.searchsorted(s.ids, chunk_id))
            if row < len(s) and s.ids[row] == chunk_id:
                return s.token_set(row)
        return set()

    def dense_search(self, vector: np.ndarray, n: int) -> dict[int, float]:
        """The n nearest chunks by inner product over every segment."""
        found: dict[int, float] = {}
        for s, dead in zip(self.segments, self._dead_in, strict=True):
            scores, ids = s.dense.search(vector, n + min(dead, n))  # room for removed chunks
            found.update((int(i), float(d)) for i, d in zip(ids[0], scores[0], strict=True) if i >= 0)
        if len(self.dead) and found:
            removed = in_sorted(np.fromiter(found, dtype=np.int64), self.dead)
            found = {i: d for (i, d), gone in zip(found.items(), removed, strict=True) if not gone}
        return dict(sorted(found.items(), key=lambda kv: kv[1], reverse=True)[:n])

    def sparse_search(self, tokens: list[str], n: int) -> dict[int, float]:
        """BM25 (Lucene's form): the n top chunks by score, without sorting every chunk's score. The IDF is the
        whole index's, so scores from different segments compare; the term-frequency part was computed when
        the segment was written."""
        total = sum(len(s) for s in self.segments)
        if not total or not tokens:
            return {}
        idf = {t: bm25.idf(df, total) for t in set(tokens) if (df := self.df(t))}
        found: dict[int, float] = {}
        for s, alive, dead in zip(self.segments, self._alive, self._dead_in, strict=True):
            p = s.postings
            parts = [(p.indptr[j], p.indptr[j + 1], w) for t, w in idf.items() if (j := s.vocab.get(t)) is not None]
            if not parts:
                continue
            rows = np.concatenate([p.indices[a:b] for a, b, _ in parts])
            weights = np.concatenate([w * p.data[a:b] for a, b, w in parts])
            scores = np.bincount(rows, weights, minlength=len(s))
            if dead:
                scores[~alive] = 0
            top = np.argpartition(-scores, n - 1)[:n] if n < len(s) else np.arange(len(s))
            top = top[scores[top] > 0]
            found.update(zip(s.ids[top].tolist(), scores[top].tolist(), strict=True))
        return dict(sorted(found.items(), key=lambda kv: kv[1], reverse=True)[:n])


class IndexLayoutError(RuntimeError):
    """The index on disk was written in a layout this version does not read."""


def current_version(index_dir: Path) -> int | None:
    try:
        return int((index_dir / "CURRENT").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_meta(index_dir: Path) -> dict | None:
    version = current_version(index_dir)
    return json.loads((index_dir / f"v{version}" / "meta.json").read_text()) if version is not None else None


def indexed_chunks(index_dir: Path) -> int:
    """How many live chunks the current index version holds (0 without an index)."""
    meta = read_meta(index_dir)
    return meta["count"] if meta else 0


def load_index(index_dir: Path, version: int | None = None, *, reuse: LoadedIndex | None = None,
               lazy: bool = False) -> LoadedIndex | None:
    """The live version (or `version`). Segments already loaded in `reuse` are taken from it: after an
    ingest a reader loads only the new segment."""
    version = current_version(index_dir) if version is None else version
    if version is None:
        return None
    folder = index_dir / f"v{version}"
    meta = json.loads((folder / "meta.json").read_text())
    if "segments" not in meta:
        raise IndexLayoutError(f"{folder}: an index written by an older medloop; run `medloop index rebuild`")
    known = {s.name: s for s in reuse.segments} if reuse is not None else {}
    segments = [known.get(name) or Segment(index_dir / "segments" / name) for name in meta["segments"]]
    if not lazy:
        segments = [s.load() for s in segments]
    return LoadedIndex(version=version, meta=meta, segments=segments, dead=np.load(folder / "dead.npy"))


def in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_ids, values), max(len(sorted_ids) - 1, 0))
    return sorted_ids[at] == values if len(sorted_ids) else np.zeros(len(values), dtype=bool)


