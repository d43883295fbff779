"""The promotion gate against month suites, end to end through the real `retrain` (incremental data -> LoRA from the
live adapter -> gate), on the word-level tiny Qwen3 the CI suite uses or on a pretrained model (SmolLM2-135M).

    python examples/gate_months.py --suite sabotage --model smollm2          # the dev suite the rules were tuned on
    python examples/gate_months.py --suite fresh --model word --seeds 0 1 2  # months written after the freeze
    python examples/gate_months.py --suite third --model word                # after the rules they changed

`sabotage` (tests/fixtures/sabotage/months.json): good1, superseded, remap, shuffle, forgetting, good2, one after
the other. `fresh` (tests/fixtures/fresh_months/months.json, written after the gate's rules were frozen) and
`third` (third_set.json, written after the fresh months showed two rules wrong and before the changed rules met
it): good1, then each month on its own from the same live adapter (a copy of the data home after good1), so that
one decision never depends on another. Every decision, with every signal and the one that decided, goes to
bench/results/gate-<suite>-<model>.json after each month (a run cut short keeps what it measured), beside what a
good gate does with each month. CPU: seconds a month on the word model, about 2 minutes on SmolLM2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from results import save  # noqa: E402

EXPECTED_SABOTAGE = {"good1": "promoted", "superseded": "rejected", "remap": "rejected", "shuffle": "rejected",
                     "forgetting": "rejected", "good2": "promoted"}


def brief(result: dict) -> dict:
    keep = ("candidate", "live", "base", "n", "worse", "better", "passed", "why")
    return {**result, "signals": {k: {f: v.get(f) for f in keep} for k, v in result["signals"].items()}}


def main() -> None:
    from medloop.config import MULTILINGUAL_EMBEDDER, Settings
    from medloop.retrieval import load_embedder
    from medloop.testing import FRESH_MONTHS, SABOTAGE, THIRD_MONTHS, month_suite_home, run_month

    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", choices=["sabotage", "fresh", "third"], default="fresh")
    parser.add_argument("--model", choices=["word", "smollm2"], default="word")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    sabotage = json.loads(SABOTAGE.read_text())["months"]
    fresh = json.loads((FRESH_MONTHS if args.suite == "fresh" else THIRD_MONTHS).read_text())
    expected = EXPECTED_SABOTAGE if args.suite == "sabotage" else {"good1": "promoted", **fresh["expected"]}
    embedder = load_embedder(MULTILINGUAL_EMBEDDER)
    results: dict[str, dict] = {}
    name = f"gate-{args.suite}-{args.model}"
    for seed in args.seeds:
        home = Path(tempfile.mkdtemp(prefix=f"medloop-{name}-{seed}-"))
        settings, retriever = month_suite_home(home / "after-good1" if args.suite == "fresh" else home, args.model,
                                               seed, embedder)
        runs = results.setdefault(f"seed {seed}", {})
        if args.suite == "sabotage":
            plan = [(month, settings) for month in sabotage]
        else:
            runs["good1"] = brief(run_month(settings, retriever, "good1", sabotage["good1"]))
            print(f"seed {seed} good1: {runs['good1']['outcome']} by {runs['good1']['decided_by']}", flush=True)
            plan = []
            for month in fresh["months"]:
                fork = home / month
                shutil.copytree(settings.home, fork)  # the state after good1, for this month alone
                plan.append((month, Settings(**{**settings.model_dump(), "home": fork})))
        for month, s in plan:
            rows = sabotage[month] if args.suite == "sabotage" else fresh["months"][month]
            runs[month] = brief(run_month(s, retriever, month, rows))
            right = "" if runs[month]["outcome"] == expected[month] else f"  <- a good gate: {expected[month]}"
            print(f"seed {seed} {month}: {runs[month]['outcome']} by {runs[month]['decided_by']} "
                  f"({runs[month]['seconds']} s){right}", flush=True)
            save(name, {"suite": args.suite, "model": args.model, "seeds": args.seeds,
                        "train": settings.training.overrides, "replay_fraction": settings.loop.replay_fraction,
                        "expected": expected}, results)


if __name__ == "__main__":
    main()
