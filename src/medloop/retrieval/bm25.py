"""BM25 as medloop scores it (Lucene's form): the term-frequency part is precomputed per posting when a segment is
written (`postings`), a query multiplies by the whole index's IDF and adds. The same IDF weighs the concepts of
the relevance score (relevance.py). One segment scores as bm25s' `BM25(method="lucene")` does (the oracle test in
tests/test_knowledge_retrieval.py).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from scipy import sparse

K1, B = 1.5, 0.75


def idf(df: int, n_docs: int) -> float:
    """Lucene's IDF of a term found in `df` of `n_docs` chunks."""
    return math.log(1 + (n_docs - df + 0.5) / (df + 0.5))


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


def postings(doc_terms: sparse.csr_matrix) -> sparse.csc_matrix:
    """Posting lists holding tf / (tf + k1 (1 - b + b dl / avgdl)): a query multiplies by IDF and adds. The length
    normalisation uses the segment's average length: the large segments that dominate a big index hold the whole
    index's average, and a query does not gather a million lengths."""
    lengths = np.asarray(doc_terms.sum(axis=1), dtype=np.float32).ravel()
    out = doc_terms.tocsc()
    tf = out.data.astype(np.float32)
    norm = 1 - B + B * lengths[out.indices] / max(float(lengths.mean()) if len(lengths) else 1, 1)
    out.data = tf / (tf + K1 * norm)
    return out
