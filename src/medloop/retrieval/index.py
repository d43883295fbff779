"""The index writer: brings the on-disk hybrid index (FAISS dense + BM25 sparse, in segments, versioned; see
segments.py for the layout and the reader) up to the store's chunks.

An ingest adds one segment with the new chunks and publishes a version listing it: a document added to a
million-chunk index costs that document, not the million (small segments are merged as they accumulate,
Lucene-style). BM25 is scored by medloop (bm25.py) over scipy posting lists with the whole index's statistics,
because per-segment BM25 indexes (bm25s) score with per-segment IDF and cannot be merged. Segments and versions are
written into a temporary folder and renamed into place; CURRENT is replaced atomically last: a reader (a running
server) sees the old version or the new one, never half of one. The index is derived state: whatever the store
holds and the index lacks (a crash between the two) is caught up by the next `sync_index`. Below `sync_index` the
writer takes `IndexParams` and the index folder, not the settings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from filelock import FileLock
from scipy import sparse

from medloop.atomic import failpoint, write_text_atomic
from medloop.config import MULTILINGUAL_EMBEDDER, Settings
from medloop.knowledge.language import is_chinese
from medloop.knowledge.store import KnowledgeStore
from medloop.retrieval import bm25
from medloop.retrieval.dense import IndexParams, build_dense
from medloop.retrieval.embedder import encoder, load_embedder
from medloop.retrieval.segments import LAYOUT, LoadedIndex, Segment, current_version, in_sorted, load_index, read_meta
from medloop.retrieval.tokenize import VERSION as TOKENS_VERSION
from medloop.retrieval.tokenize import tokenize

KEEP_VERSIONS = 2  # the previous version stays for readers that are still loading it


def chunk_index_text(title: str, section: str, text: str) -> str:
    # Title and section carry the topic that a short paragraph often leaves implicit.
    return f"{title} {section}\n{text}".strip()


def ensure_query_encoder(settings: Settings, embedder=None, *, force: bool = False) -> bool:
    """Export the embedder for fast question (and passage) embedding (see `query_encoder`) unless already there.
    True when an export is in place afterwards."""
    from medloop.retrieval import query_encoder

    if settings.retrieval.embedder == MULTILINGUAL_EMBEDDER:
        return False  # numpy already, loaded in about a second: nothing to export
    folder = query_encoder.encoder_dir(settings.index_dir, settings.retrieval.embedder)
    if (folder / "encoder.json").exists() and not force:
        return True
    with writer_lock(settings.index_dir):
        name = settings.retrieval.embedder
        return query_encoder.export(embedder or load_embedder(name), folder, name)


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
    store deleted, merge small segments. `rebuild`: re-embed everything into one segment. `embedder`: one already
    loaded (the scheduler keeps one), else the exported encoder (no torch) or the configured model."""
    with writer_lock(settings.index_dir):
        return _sync(settings.index_dir, IndexParams.of(settings), store, embedder, rebuild, on_progress,
                     batch_size)


def compact_index(settings: Settings) -> SyncResult:
    """Merge every segment into one, without the removed chunks (nothing is re-embedded or re-tokenised)."""
    index_dir, params = settings.index_dir, IndexParams.of(settings)
    with writer_lock(index_dir):
        old = load_index(index_dir, lazy=True)
        if old is None:
            raise FileNotFoundError(f"no index in {index_dir}: run `medloop ingest` first")
        if len(old.segments) <= 1 and not len(old.dead):
            return SyncResult(old.version, 0, 0, old.count, changed=False)  # one segment, nothing removed
        merged = Segment(_merge(index_dir, params, old.segments, old.dead))
        version = _publish(index_dir, params, [merged], np.zeros(0, dtype=np.int64), old.meta["store_revision"])
        return SyncResult(version, 0, len(old.dead), len(merged), changed=True, merged=len(old.segments))


def _signature(params: IndexParams) -> dict:
    return params.signature(TOKENS_VERSION, LAYOUT)


def _sync(index_dir: Path, params: IndexParams, store, embedder, rebuild, on_progress, batch_size) -> SyncResult:
    revision = store.revision()
    meta = read_meta(index_dir)
    # another embedder, index type or layout: the old segments do not apply
    fits = meta is not None and meta.get("params") == _signature(params)
    old = load_index(index_dir, lazy=True) if fits and not rebuild else None
    if old is not None and old.meta.get("store_revision") == revision:
        return SyncResult(old.version, 0, 0, old.count, changed=False)

    new_ids, removed = _changes(store, old)
    new_ids = new_ids.tolist()
    segments = list(old.segments) if old is not None else []
    dead = np.union1d(old.dead, removed) if old is not None else np.zeros(0, dtype=np.int64)
    if new_ids:
        embedder = embedder or encoder(index_dir, params.embedder)
        staging = _Staging(index_dir / ".staging", _signature(params))
        ids, vectors, tokens = _embed_new(store, new_ids, embedder, batch_size, on_progress,
                                          params.multilingual, staging)
        segments.append(Segment(_write_segment(index_dir, params, ids, vectors, *bm25.term_matrix(tokens))))
    segments, dead, merged = _merge_policy(index_dir, params, segments, dead)
    version = _publish(index_dir, params, segments, dead, revision)
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
    return new_ids, have[~in_sorted(have, want)]


MERGE_FACTOR = 8  # this many segments of one size tier are merged into one of the next tier
MAX_DEAD_SHARE = 0.25  # a segment with more removed chunks than this is rewritten without them


def _tier(size: int) -> int:
    return int(np.log(max(size, 1)) / np.log(MERGE_FACTOR))


def _merge_policy(index_dir: Path, params: IndexParams, segments: list[Segment], dead: np.ndarray):
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
        new = Segment(_merge(index_dir, params, group, dead))
        segments = [s for s in segments if s.name not in names] + ([new] if len(new) else [])
        merged += len(group)
    listed = np.concatenate([s.ids for s in segments]) if segments else np.zeros(0, dtype=np.int64)
    return segments, dead[np.isin(dead, listed)], merged


def _merge(index_dir: Path, params: IndexParams, group: list[Segment], dead: np.ndarray) -> Path:
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
    return _write_segment(index_dir, params, ids[order], np.concatenate(vectors)[order], matrix[order], list(vocab))


def _write_segment(index_dir: Path, params: IndexParams, ids: np.ndarray, embeddings: np.ndarray,
                   doc_terms: sparse.csr_matrix, terms: list[str]) -> Path:
    """Write a segment to a temporary folder, fsync it, rename it into `segments/`: whole or absent."""
    folder = index_dir / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=index_dir, prefix=".tmp-"))
    np.save(tmp / "ids.npy", ids.astype(np.int64))
    np.save(tmp / "embeddings.npy", embeddings.astype(np.float32))
    faiss.write_index(build_dense(embeddings, ids, params), str(tmp / "dense.faiss"))
    (tmp / "terms.txt").write_text("\n".join(terms))
    sparse.save_npz(tmp / "doc_terms.npz", doc_terms, compressed=False)
    sparse.save_npz(tmp / "postings.npz", bm25.postings(doc_terms), compressed=False)
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


def _publish(index_dir: Path, params: IndexParams, segments: list[Segment], dead: np.ndarray, revision: int) -> int:
    """Write a version (the list of its segments and the chunks removed from them) to a temporary folder, fsync
    it, rename it into place, then point CURRENT at it: a reader sees the old version or the new one, whole."""
    version = max([current_version(index_dir) or 0] + [_folder_version(p) for p in index_dir.glob("v*")]) + 1
    tmp = Path(tempfile.mkdtemp(dir=index_dir, prefix=".tmp-"))
    np.save(tmp / "dead.npy", np.asarray(dead, dtype=np.int64))
    meta = {
        "version": version, "store_revision": revision, "count": sum(len(s) for s in segments) - len(dead),
        "segments": [s.name for s in segments], "params": _signature(params),
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
