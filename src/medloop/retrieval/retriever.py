"""Hybrid search: FAISS dense + BM25 sparse, fused by weighted reciprocal rank; newest version wins."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np

from medloop.config import Settings
from medloop.knowledge.language import is_chinese
from medloop.knowledge.similarity import fingerprint, near_duplicates, shingles
from medloop.knowledge.store import ChunkRecord, KnowledgeStore
from medloop.retrieval.index import LoadedIndex, current_version, load_embedder, load_index
from medloop.retrieval.tokenize import tokenize


@dataclass
class Hit:
    chunk: ChunkRecord
    score: float  # fused RRF score: ranks, not relevance
    dense_score: float  # cosine similarity, or nan when not in the dense list
    sparse_score: float  # BM25 score, 0 when no query term matched
    coverage: float  # share of the question's terms found in the chunk
    relevant: bool  # passes the evidence thresholds

    def to_dict(self) -> dict:
        return {**asdict(self.chunk), "score": self.score, "dense_score": self.dense_score,
                "sparse_score": self.sparse_score, "coverage": self.coverage, "relevant": self.relevant}


class Retriever:
    """Thread-safe; reloads a newer index version on the next search after `sync_index` publishes it."""

    def __init__(self, settings: Settings, *, store: KnowledgeStore | None = None, embedder=None):
        self.settings = settings
        self.store = store or KnowledgeStore(settings.knowledge_db)
        self._embedder = embedder
        self._index: LoadedIndex | None = None
        self._lock = threading.Lock()

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = load_embedder(self.settings.embedder)
        return self._embedder

    def index(self) -> LoadedIndex | None:
        live = current_version(self.settings.index_dir)
        with self._lock:
            if live is not None and (self._index is None or self._index.version != live):
                try:
                    self._index = load_index(self.settings.index_dir, live)
                except FileNotFoundError:  # cleaned away under us by a newer version: next call catches up
                    pass
            return self._index

    def search(self, query: str, k: int = 5, *, include_superseded: bool = False) -> list[Hit]:
        index = self.index()
        if index is None or len(index.ids) == 0 or not query.strip():
            return []
        s = self.settings
        n = min(len(index.ids), max(50, 10 * k))
        cjk = is_chinese(query)
        dense_usable = s.embedder_multilingual or not cjk

        qvec = self.embedder.encode([query], normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
        dense_scores, dense_ids = index.dense.search(qvec, n)
        dense = {int(i): float(d) for i, d in zip(dense_ids[0], dense_scores[0], strict=True) if i >= 0}

        sparse: dict[int, float] = {}
        qtokens = tokenize(query)
        if qtokens and index.sparse is not None:
            scores = index.sparse.get_scores(qtokens)
            top = np.argsort(-scores)[:n]
            sparse = {int(index.ids[i]): float(scores[i]) for i in top if scores[i] > 0}

        w_dense = s.dense_weight if dense_usable else s.dense_weight_cjk
        fused: dict[int, float] = {}
        for weight, ranked in ((w_dense, dense), (s.sparse_weight, sparse)):
            for rank, cid in enumerate(sorted(ranked, key=ranked.get, reverse=True)):
                fused[cid] = fused.get(cid, 0.0) + weight / (s.rrf_k + rank + 1)

        records = {c.chunk_id: c for c in self.store.chunks(list(fused))}
        query_terms = set(qtokens)
        hits, seen = [], []  # seen: 4-gram sets of the passages already returned
        for cid in sorted(fused, key=fused.get, reverse=True):
            chunk = records.get(cid)
            if chunk is None or (chunk.superseded and not include_superseded):
                continue  # deleted since indexing, or an older version of a guideline
            grams = shingles(fingerprint(chunk.text))
            if any(near_duplicates(grams, other) for other in seen):
                continue  # the same passage (another file, another guideline's copy): shown and cited once
            seen.append(grams)
            d, sp = dense.get(cid, float("nan")), sparse.get(cid, 0.0)
            # Coverage, not a BM25 score, decides relevance: BM25 scores grow with corpus size, coverage does not.
            cover = len(query_terms & index.token_set(cid)) / len(query_terms) if query_terms else 0.0
            relevant = cover > s.min_coverage or (dense_usable and d >= s.min_cosine)
            hits.append(Hit(chunk, fused[cid], d, sp, cover, relevant))
            if len(hits) == k:
                break
        return hits
