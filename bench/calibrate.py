"""Calibrate `min_evidence` for each built-in embedder on the dev sets (the sample guidelines' dev set and the
unseen-topic set unseen-a, each on its own index), into bench/results/calibration.json. The thresholds are
written into `config.MIN_EVIDENCE` by hand from that file; held-out, fresh and unseen-b are never used here.

    .venv/bin/python bench/calibrate.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.config import ENGLISH_EMBEDDER, MULTILINGUAL_EMBEDDER, Settings  # noqa: E402
from medloop.knowledge import KnowledgeStore, ingest_paths  # noqa: E402
from medloop.resources import SAMPLE_GUIDELINES  # noqa: E402
from medloop.retrieval import Retriever, quality, sync_index  # noqa: E402
from results import ingested, save  # noqa: E402

SETS = Path(__file__).resolve().parent / "sets"
MAX_FALSE_CITE_RATE = 0.02  # of the off-topic questions of both sets together: 1 of 57


def retriever(embedder: str, guidelines: Path) -> Retriever:
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="medloop-calibrate-")), retrieval={"embedder": embedder})
    store = KnowledgeStore(settings.knowledge_db)
    ingested(ingest_paths(store, [guidelines]))
    sync_index(settings, store)
    return Retriever(settings, store=store)


def main() -> None:
    figures = {}
    dev = quality.load_labelled(quality.sample_set("dev"))
    unseen = quality.load_labelled(SETS / "unseen-a" / "questions.jsonl")
    for embedder in (MULTILINGUAL_EMBEDDER, ENGLISH_EMBEDDER):
        both = quality.Routed([(retriever(embedder, SAMPLE_GUIDELINES), dev),
                               (retriever(embedder, SETS / "unseen-a" / "guidelines"), unseen)])
        c = quality.calibrate(both, both.rows, 3, MAX_FALSE_CITE_RATE)
        figures[embedder] = {"min_evidence": c.min_evidence, "gap": c.gap, "cited_recall": c.cited_recall,
                             "false_cite_rate": c.false_cite_rate}
        print(f"{embedder}: min_evidence {c.min_evidence} (gap {c.gap}), cited {c.cited_recall:.3f}, "
              f"false cites {c.false_cite_rate:.3f}")
    save("calibration", {"sets": ["retrieval_dev.jsonl", "unseen-a"], "max_false_cite_rate": MAX_FALSE_CITE_RATE},
         figures)


if __name__ == "__main__":
    main()
