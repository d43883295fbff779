"""Hybrid guideline retrieval: FAISS dense + BM25 sparse (jieba for Chinese), fused; newest version wins."""

from medloop.retrieval.embedder import load_embedder
from medloop.retrieval.index import sync_index
from medloop.retrieval.retriever import Hit, Retriever

__all__ = ["Hit", "Retriever", "load_embedder", "sync_index"]
