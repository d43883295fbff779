"""The stale-answer check on its labelled sets (not a test): the dev set it was built on, the held-out set written
apart, the fresh set written after the check was frozen (it showed two of the check's readings wrong, which were
then changed), the second fresh set written after that change (it showed three more, changed too), the third
written after those (it showed two, changed), the fourth written after that (it showed five readings wrong,
changed), the fifth written after those (it showed three, changed), the sixth written after that (it showed three,
changed), and the seventh written after those (reported, never tuned on), against the sample guidelines (two of
them have a superseded version), into bench/results/stale.json. `--as NAME` writes bench/results/NAME.json
instead: a set's first run kept beside the figures after the changes it moved.

    .venv/bin/python bench/stale.py
    .venv/bin/python bench/stale.py --as stale-fresh4-first-run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.knowledge import KnowledgeStore, ingest_paths  # noqa: E402
from medloop.retrieval import quality  # noqa: E402
from medloop.testing import GUIDELINES  # noqa: E402
from results import ingested, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--as", dest="name", default="stale", help="the result file's name")
    args = parser.parse_args()
    store = KnowledgeStore(Path(tempfile.mkdtemp()) / "knowledge.db")
    ingested(ingest_paths(store, [GUIDELINES]))
    figures = {}
    for name in quality.STALE_SETS:
        result = quality.stale_check_quality(store, quality.stale_set(name))
        figures[name] = {k: v for k, v in result.items() if k != "per_answer"}
        figures[name]["wrong"] = [a for a in result["per_answer"] if not a["correct"]]
        print(f"{name}: detection {result['detection']} on {result['stale_answers']} stale answers, false-flag rate "
              f"{result['false_flag_rate']} on {result['current_answers']} current ones")
    sets = [f"stale_{name}.jsonl" for name in figures]
    save(args.name, {"guidelines": "the sample guidelines", "sets": sets}, figures)


if __name__ == "__main__":
    main()
