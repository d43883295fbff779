"""The dense half of a segment: which FAISS index its vectors go in, and the search-time knobs."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from medloop.config import Index, Settings


@dataclass(frozen=True)
class IndexParams:
    """What the index is built and searched with: the embedder (settings `[retrieval]`) and the FAISS knobs
    (`[index]`); `signature` is what a version records, so another embedder, index type or layout is rebuilt
    instead of mixed."""

    embedder: str
    multilingual: bool
    index: Index

    @classmethod
    def of(cls, settings: Settings) -> IndexParams:
        return cls(settings.retrieval.embedder, bool(settings.retrieval.embedder_multilingual), settings.index)

    def signature(self, tokens: int, layout: int) -> dict:
        return {"embedder": self.embedder, "tokens": tokens, "index_type": self.index.type,
                "hnsw_m": self.index.hnsw_m, "ivf_nlist": self.index.ivf_nlist, "layout": layout}


EXACT_BELOW = 20_000  # `auto`: a flat scan of fewer vectors takes a few ms on two cores and is exact


def build_dense(embeddings: np.ndarray, ids: np.ndarray, params: IndexParams) -> faiss.Index:
    """Only chunks with a vector go in: a zero row is text the embedder was not asked to read."""
    dim = embeddings.shape[1]
    embedded = np.linalg.norm(embeddings, axis=1) > 0 if len(ids) else np.zeros(0, dtype=bool)
    embeddings, ids = np.ascontiguousarray(embeddings[embedded], dtype=np.float32), ids[embedded]
    n = len(ids)
    kind = params.index.type
    if kind == "auto":
        kind = "flat" if n < EXACT_BELOW else "ivf"
    if kind == "ivf":
        nlist = params.index.ivf_nlist or max(1, int(np.sqrt(n)))
        if n < 39 * nlist:  # FAISS needs ~39 training points per list; a small corpus is exact anyway
            kind = "flat"
    if kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, params.index.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = max(40, params.index.hnsw_m * 2)
        base.hnsw.efSearch = params.index.hnsw_ef_search
    elif kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        base = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)
        base.train(embeddings[np.sort(sample)])  # 64 points a list: k-means on a million would take minutes
        base.nprobe = params.index.ivf_nprobe
    else:
        base = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(base)
    if n:
        index.add_with_ids(embeddings, ids)
    return index




def tune(index: faiss.Index, params: IndexParams) -> None:
    """Search-time knobs of an approximate index follow the settings, not the ones it was written with."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = params.index.ivf_nprobe
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = params.index.hnsw_ef_search
