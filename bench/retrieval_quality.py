"""Retrieval quality on the three labelled sets, in one run on the sample guidelines (not a test): dev (tuned on),
held-out (written apart, never tuned on) and fresh (written after the lexicon was frozen, committed before its first
run). Saves bench/results/retrieval_quality-{dev,heldout,fresh}.json with every figure and question. CI asserts on
dev only.

    .venv/bin/python bench/retrieval_quality.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.retrieval import quality  # noqa: E402
from results import sample_retriever, save  # noqa: E402


def main() -> None:
    settings, retriever = sample_retriever("medloop-retrieval-")
    for name in ("dev", "heldout", "fresh"):
        path = quality.sample_set(name)
        result = quality.retrieval_quality(retriever, quality.load_labelled(path), 3)
        print(f"{name:8s} cited recall {result['cited_recall']:.3f}, false-cite rate {result['false_cite_rate']:.3f}, "
              f"hit@3 {result['hit_at_3']:.3f} ({result['on_topic']} on-topic, {result['off_topic']} off-topic)")
        save(f"retrieval_quality-{name}", {"set": path.name, "k": 3, "embedder": settings.retrieval.embedder,
                                           "min_evidence": settings.retrieval.min_evidence}, result)


if __name__ == "__main__":
    main()
