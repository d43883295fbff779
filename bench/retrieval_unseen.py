"""Evidence on a hospital's own guidelines (issue #31): a labelled set under bench/sets/<name>/ (guidelines the
sample corpus and the lexicon do not cover, questions in both languages and across them, off-topic near misses,
stale-check answers), ingested alone into a fresh home and measured through `Retriever.search` with the settings
as they are. Saves bench/results/retrieval_<name>-<label>.json with the commit that froze the set, so a figure
can be traced to a set written before it.

    .venv/bin/python bench/retrieval_unseen.py unseen-a --label current
    MEDLOOP_RETRIEVAL__EMBEDDER=all-MiniLM-L6-v2 .venv/bin/python bench/retrieval_unseen.py unseen-a --label minilm
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.config import Settings  # noqa: E402
from medloop.knowledge import KnowledgeStore, ingest_paths  # noqa: E402
from medloop.retrieval import Retriever, quality, sync_index  # noqa: E402
from results import ingested, save  # noqa: E402

SETS = Path(__file__).resolve().parent / "sets"


def frozen_at(folder: Path) -> str:
    """The commit that last changed the set: a figure is only worth as much as the set's age."""
    out = subprocess.run(["git", "log", "-1", "--format=%H %cI", "--", str(folder)], capture_output=True, text=True,
                         cwd=folder)
    return out.stdout.strip() or "uncommitted"


def measure(folder: Path, settings: Settings) -> dict:
    store = KnowledgeStore(settings.knowledge_db)
    start = time.perf_counter()
    ingested(ingest_paths(store, [folder / "guidelines"]))
    sync_index(settings, store)
    ingest_s = time.perf_counter() - start
    retriever = Retriever(settings, store=store)
    result = quality.retrieval_quality(retriever, quality.load_labelled(folder / "questions.jsonl"), 3)
    result["ingest_s"] = round(ingest_s, 1)
    stale = folder / "stale.jsonl"
    if stale.exists():
        result["stale"] = quality.stale_check_quality(store, stale)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("set", help="a folder under bench/sets/")
    parser.add_argument("--label", default="current", help="names the result file: what was measured")
    args = parser.parse_args()
    folder = SETS / args.set
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="medloop-unseen-")))
    result = measure(folder, settings)
    by_kind = ", ".join(f"{k} {v:.2f}" for k, v in result["cited_recall_by_kind"].items())
    print(f"{args.set} [{args.label}] cited {result['cited_recall']:.3f} ({by_kind}); hit@3 {result['hit_at_3']:.3f};"
          f" false cites {result['false_cite_rate']:.3f} of {result['off_topic']} off-topic")
    if "stale" in result:
        s = result["stale"]
        print(f"stale check: detection {s['detection']} of {s['stale_answers']}, false flags {s['false_flag_rate']}"
              f" of {s['current_answers']}")
    save(f"retrieval_{args.set}-{args.label}",
         {"set": args.set, "frozen_at": frozen_at(folder), "embedder": settings.retrieval.embedder,
          "min_evidence": settings.retrieval.min_evidence}, result)


if __name__ == "__main__":
    main()
