"""Retrieval quality on the three labelled sets, in one run on the sample guidelines (not a test): dev (tuned on),
held-out (written apart, never tuned on) and fresh (written after the lexicon was frozen, committed before its first
run). Saves bench/results/retrieval_quality-{dev,heldout,fresh}.json with every figure and question. CI asserts on
dev only.

    .venv/bin/python bench/retrieval_quality.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.config import Settings  # noqa: E402
from medloop.knowledge import KnowledgeStore, ingest_paths  # noqa: E402
from medloop.retrieval import Retriever, load_embedder, quality, sync_index  # noqa: E402
from medloop.testing import GUIDELINES  # noqa: E402
from results import ingested, save  # noqa: E402


def main() -> None:
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="medloop-retrieval-")))
    embedder = load_embedder(settings.retrieval.embedder)
    store = KnowledgeStore(settings.knowledge_db)
    ingested(ingest_paths(store, [GUIDELINES]))
    sync_index(settings, store, embedder=embedder)
    retriever = Retriever(settings, store=store, embedder=embedder)
    for name in ("dev", "heldout", "fresh"):
        path = quality.sample_set(name)
        result = quality.retrieval_quality(retriever, quality.load_labelled(path), 3)
        print(f"{name:8s} cited recall {result['cited_recall']:.3f}, false-cite rate {result['false_cite_rate']:.3f}, "
              f"hit@3 {result['hit_at_3']:.3f} ({result['on_topic']} on-topic, {result['off_topic']} off-topic)")
        save(f"retrieval_quality-{name}", {"set": path.name, "k": 3, "embedder": settings.retrieval.embedder,
                                           "min_evidence": settings.retrieval.min_evidence}, result)


if __name__ == "__main__":
    main()
