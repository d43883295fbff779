"""Hybrid search: FAISS dense + BM25 sparse, fused by weighted reciprocal rank; newest version wins."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass

import numpy as np

from medloop.config import Settings
from medloop.knowledge.language import is_chinese
from medloop.knowledge.similarity import fingerprint, near_duplicates, shingles
from medloop.knowledge.store import ChunkRecord, KnowledgeStore
from medloop.retrieval import query_encoder
from medloop.retrieval.dense import IndexParams
from medloop.retrieval.dictionary import Bridge, dictionary
from medloop.retrieval.embedder import load_embedder
from medloop.retrieval.lexicon import lexicon
from medloop.retrieval.relevance import analyse, concept_weights, relevance
from medloop.retrieval.segments import IndexLayoutError, LoadedIndex, current_version, load_index

log = logging.getLogger("medloop.retrieval")


@dataclass
class Hit:
    chunk: ChunkRecord
    score: float  # rank score: fused RRF (or the reranker's score): ranks, not relevance
    dense_score: float  # cosine similarity, or nan when not in the dense list
    sparse_score: float  # BM25 score, 0 when no query term matched
    relevance: float  # IDF-weighted share of the question's concepts found in the chunk, in [0, 1]
    evidence: float  # what the citation is decided on: see `evidence`
    relevant: bool  # evidence >= min_evidence (or the reranker's own threshold): cited

    def to_dict(self) -> dict:
        return {**asdict(self.chunk), "score": self.score, "dense_score": self.dense_score,
                "sparse_score": self.sparse_score, "relevance": self.relevance, "evidence": self.evidence,
                "relevant": self.relevant}


def evidence(relevance: float, cosine: float, knows_language: bool) -> float:
    """The share of the question's concepts a passage covers (in either language, through the lexicon and the
    dictionary) plus how close the embedder reads it to the question, where the embedder knows the question's
    language (nothing where the passage was not among the dense results). Either view alone lets through what
    the other catches: a near miss on the same topic reads close; an answer in the other language shares few
    words. Its threshold, `min_evidence`, is calibrated (`medloop eval retrieval --calibrate`)."""
    return relevance + (cosine if knows_language and not math.isnan(cosine) else 0.0)


CANDIDATES = 20  # fused candidates whose relevance is scored before the top k are chosen
QUESTION_CHARS = 2000  # what a question is about is in its first lines; a pasted document must not cost seconds


class Retriever:
    """Thread-safe; reloads a newer index version on the next search after `sync_index` publishes it."""

    def __init__(self, settings: Settings, *, store: KnowledgeStore | None = None, embedder=None, reranker=None):
        self.settings = settings
        self.store = store or KnowledgeStore(settings.knowledge_db)
        self._embedder = embedder
        self._reranker = reranker
        self._index: LoadedIndex | None = None
        self._lock = threading.Lock()
        self._unreadable: int | None = None  # the version that could not be read (said once)
        self._bridge: tuple[int, Bridge] | None = None  # (store revision, its bridge)
        self.lexicon = lexicon(str(settings.retrieval.lexicon) if settings.retrieval.lexicon else None)

    @property
    def embedder(self):
        """The exported ONNX question encoder when `medloop ingest` left one (loads in a fraction of a second),
        else the sentence-transformers model."""
        if self._embedder is None:
            exported = query_encoder.load(self.settings.index_dir, self.settings.retrieval.embedder)
            self._embedder = exported or load_embedder(self.settings.retrieval.embedder)
        return self._embedder

    @property
    def reranker(self):
        if self._reranker is None and self.settings.retrieval.reranker:
            from sentence_transformers import CrossEncoder

            self._reranker = CrossEncoder(self.settings.retrieval.reranker, device="cpu")
        return self._reranker

    def knows_language(self, question: str) -> bool:
        """Does the embedder understand the question? An English-only one places a Chinese question at random."""
        return self.settings.retrieval.embedder_multilingual or not is_chinese(question)

    def bridge(self) -> Bridge:
        """The dictionary with the bilingual terms of the guidelines stored now (read again when they change)."""
        revision = self.store.revision()
        with self._lock:
            if self._bridge is None or self._bridge[0] != revision:
                self._bridge = (revision, Bridge(dictionary(), self.store.bilingual_terms()))
            return self._bridge[1]

    def warm(self) -> None:
        """Load what the first question would otherwise wait for: the dictionary (its tables are built on a
        machine's first use), the index, the embedder."""
        self.bridge()
        self.index()
        self.embedder  # noqa: B018 - loaded for its side effect

    def index(self) -> LoadedIndex | None:
        live = current_version(self.settings.index_dir)
        with self._lock:
            if live is not None and (self._index is None or self._index.version != live):
                try:
                    self._index = load_index(self.settings.index_dir, live, reuse=self._index)
                    params = IndexParams.of(self.settings)
                    for segment in self._index.segments:
                        segment.tune(params)
                except FileNotFoundError:  # cleaned away under us by a newer version: next call catches up
                    pass
                except IndexLayoutError as e:  # an index of an older layout: answers go without evidence until rebuilt
                    if self._unreadable != live:
                        log.error("%s", e)
                        self._unreadable = live
            return self._index

    def search(self, question: str, k: int = 5, *, include_superseded: bool = False) -> list[Hit]:
        index = self.index()
        if index is None or index.count == 0 or not question.strip():
            return []
        s = self.settings.retrieval
        n = min(index.count, max(50, 10 * k))
        question = question[:QUESTION_CHARS]
        query = analyse(question, self.lexicon, self.bridge())
        knows_language = self.knows_language(question)
        w_dense = s.dense_weight if knows_language else s.dense_weight_cjk

        dense: dict[int, float] = {}
        if w_dense > 0:
            qvec = self.embedder.encode([question], normalize_embeddings=True, convert_to_numpy=True)
            dense = index.dense_search(qvec.astype(np.float32), n)
        sparse = index.sparse_search(list(query.sparse_tokens), n)

        fused: dict[int, float] = {}
        for weight, ranked in ((w_dense, dense), (s.sparse_weight, sparse)):
            for rank, cid in enumerate(sorted(ranked, key=ranked.get, reverse=True)):
                fused[cid] = fused.get(cid, 0.0) + weight / (s.rrf_k + rank + 1)

        records = {c.chunk_id: c for c in self.store.chunks(list(fused))}
        weights = concept_weights(query, index.df, index.count)
        candidates, seen = [], []  # seen: 4-gram sets of the passages already taken
        for cid in sorted(fused, key=fused.get, reverse=True):
            chunk = records.get(cid)
            if chunk is None or (chunk.superseded and not include_superseded):
                continue  # deleted since indexing, or an older version of a guideline
            grams = shingles(fingerprint(chunk.text))
            if any(near_duplicates(grams, other) for other in seen):
                continue  # the same passage (another file, another guideline's copy): shown and cited once
            seen.append(grams)
            d = dense.get(cid, float("nan"))
            rel = relevance(query, index.token_set(cid), weights)
            ev = evidence(rel, d, knows_language)
            candidates.append(Hit(chunk, fused[cid], d, sparse.get(cid, 0.0), rel, ev, ev >= s.min_evidence))
            if len(candidates) == (s.reranker_candidates if s.reranker else max(k, CANDIDATES)):
                break
        if s.reranker and candidates:
            return self._rerank(question, candidates)[:k]
        # By evidence, fused rank within a tie: fusion alone lets the embedder's favourite passage in one language
        # outrank the guideline that a question names concept by concept in the other.
        return sorted(candidates, key=lambda h: (round(h.evidence, 2), h.score), reverse=True)[:k]

    def _rerank(self, question: str, hits: list[Hit]) -> list[Hit]:
        """The cross-encoder reads question and passage together: its order replaces the fused one."""
        s = self.settings.retrieval
        scores = self.reranker.predict([(question, h.chunk.text) for h in hits], show_progress_bar=False)
        for hit, score in zip(hits, scores, strict=True):
            hit.score = float(score)
            if s.reranker_min_score is not None and score >= s.reranker_min_score:
                hit.relevant = True
        return sorted(hits, key=lambda h: h.score, reverse=True)
