"""The promotion gate against month suites, end to end through the real `retrain` (incremental data -> LoRA from the
live adapter -> gate), on the word-level tiny Qwen3 the CI suite uses or on a pretrained model (SmolLM2-135M).

    python examples/gate_months.py --suite sabotage --model smollm2          # the dev suite the rules were tuned on
    python examples/gate_months.py --suite fresh --model word --seeds 0 1 2  # months written after the freeze
    python examples/gate_months.py --suite third --model word                # after the rules they changed
    python examples/gate_months.py --suite smollm2 --model smollm2           # written for SmolLM2 after a freeze
    python examples/gate_months.py --suite smollm2b --model smollm2          # after SmolLM2's replay changed
    python examples/gate_months.py --suite smollm2b --model smollm2 --seeds 2 --resume  # finish a run cut short
    python examples/gate_months.py --suite smollm2c --model smollm2          # after the gate asked new_facts

`sabotage` (tests/fixtures/sabotage/months.json): good1, superseded, remap, shuffle, forgetting, good2, one after
the other. `fresh` (tests/fixtures/fresh_months/months.json, written after the gate's rules were frozen) and
`third` (third_set.json, written after the fresh months showed two rules wrong and before the changed rules met
it): good1, then each month on its own from the same live adapter (a copy of the data home after good1), so that
one decision never depends on another. `smollm2` (smollm2_set.json, written after the rules froze for the runs
on SmolLM2), `smollm2b` (smollm2_set2.json, written after SmolLM2's recipe replayed twice as much) and `smollm2c`
(smollm2_set3.json, written after the gate's `new_facts`) are run the same way, and each of their months is also
judged by what its adapter does: questions written apart from the month's rows (`probes`, `kept`) are asked of
the candidate and of the live adapter without evidence, and the month's truth follows the rule frozen in that
file. Every decision, with every signal and the one that decided, goes to bench/results/gate-<suite>-<model>.json
after each month (a run cut short keeps what it measured), beside what a good gate does with each month. CPU:
seconds a month on the word model, about 2 minutes on SmolLM2.
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
from results import RESULTS, save  # noqa: E402

EXPECTED_SABOTAGE = {"good1": "promoted", "superseded": "rejected", "remap": "rejected", "shuffle": "rejected",
                     "forgetting": "rejected", "good2": "promoted"}


def brief(result: dict) -> dict:
    keep = ("candidate", "live", "base", "n", "worse", "better", "passed", "why")
    return {**result, "signals": {k: {f: v.get(f) for f in keep} for k, v in result["signals"].items()}}


def probe(settings, live: str, candidate: str, probes: list[dict], kept: list[dict]) -> dict:
    """What each adapter says, without evidence, to questions it was never trained on: per probe, whether the
    answer states what is right (`right`) and the month's wrong value (`wrong`)."""
    from peft import PeftModel

    from medloop.continual.gate import greedy_answers
    from medloop.continual.mcq import MCQItem, item_prompt
    from medloop.models import load

    base, tokenizer = load(settings.training.base_model, quantize=False)
    model = PeftModel.from_pretrained(base, candidate, adapter_name="candidate").eval()
    model.load_adapter(live, adapter_name="live")
    asked = [*probes, *kept]
    prompts = [item_prompt(tokenizer, MCQItem(q["question"], {}, "", 0), options=False) for q in asked]
    out = {}
    for which in ("candidate", "live"):
        model.set_adapter(which)
        answers = greedy_answers(model, tokenizer, prompts, 40)
        states = [{key: any(w.casefold() in a for w in q.get(key, [])) for key in ("right", "wrong")}
                  for q, a in zip(asked, answers, strict=True)]
        out[which] = {"taught": sum(s["right"] for s in states[:len(probes)]),
                      "wrong": sum(s["wrong"] for s in states[:len(probes)]),
                      "kept": sum(s["right"] for s in states[len(probes):]), "answers": answers}
    return {**out, "probes": len(probes), "kept_probes": len(kept)}


def truth(label: str, probed: dict, forgetting: int, teach: bool = False) -> tuple[str, str]:
    """What a good gate does with the month, by the rule frozen in smollm2_set.json; with `teach` (smollm2_set3.json
    on), a month labelled good whose adapter states its facts in no more probes than the live one taught nothing
    and is rejected too."""
    cand, live = probed["candidate"], probed["live"]
    lost = live["kept"] - cand["kept"]
    said = (f"probes: states the month's facts {cand['taught']}/{probed['probes']} (live {live['taught']}), "
            f"a wrong value {cand['wrong']} (live {live['wrong']}); kept facts {cand['kept']}/{probed['kept_probes']} "
            f"(live {live['kept']})")
    if label == "promoted":
        if lost >= forgetting:
            return "rejected", f"forgot ({said})"
        return ("rejected", f"taught nothing ({said})") if teach and cand["taught"] <= live["taught"] \
            else ("promoted", said)
    harm = cand["wrong"] > live["wrong"] or lost >= forgetting
    return "rejected", f"harm {'showed' if harm else 'not shown yet'} ({said})"


def main() -> None:
    from medloop.config import MULTILINGUAL_EMBEDDER, Settings
    from medloop.continual.registry import AdapterRegistry
    from medloop.retrieval import load_embedder
    from medloop.testing import FIXTURES, FRESH_MONTHS, SABOTAGE, THIRD_MONTHS, month_suite_home, run_month

    suites = {"fresh": FRESH_MONTHS, "third": THIRD_MONTHS, "smollm2": FIXTURES / "fresh_months" / "smollm2_set.json",
              "smollm2b": FIXTURES / "fresh_months" / "smollm2_set2.json",
              "smollm2c": FIXTURES / "fresh_months" / "smollm2_set3.json"}

    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", choices=["sabotage", *suites], default="fresh")
    parser.add_argument("--model", choices=["word", "smollm2"], default="word")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resume", action="store_true",
                        help="keep the saved results of the seeds not named (a run cut short), run the named ones anew")
    args = parser.parse_args()
    sabotage = json.loads(SABOTAGE.read_text())["months"]
    fresh = json.loads(suites.get(args.suite, FRESH_MONTHS).read_text())
    expected = EXPECTED_SABOTAGE if args.suite == "sabotage" else {"good1": "promoted", **fresh["expected"]}
    embedder = load_embedder(MULTILINGUAL_EMBEDDER)
    name = f"gate-{args.suite}-{args.model}"
    saved = RESULTS / f"{name}.json"
    results: dict[str, dict] = json.loads(saved.read_text())["figures"] if args.resume and saved.exists() else {}
    for seed in args.seeds:
        results.pop(f"seed {seed}", None)  # a seed cut short starts again from good1: its data home is gone
    seeds = sorted({*args.seeds, *(int(key.split()[1]) for key in results)})
    for seed in args.seeds:
        home = Path(tempfile.mkdtemp(prefix=f"medloop-{name}-{seed}-"))
        settings, retriever = month_suite_home(home if args.suite == "sabotage" else home / "after-good1",
                                               args.model, seed, embedder)
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
            live = AdapterRegistry(s.adapters_dir).live()
            runs[month] = brief(run_month(s, retriever, month, rows))
            should, why = expected[month], ""
            if "probes" in fresh and live is not None:
                candidate = AdapterRegistry(s.adapters_dir).versions()[-1]
                probed = probe(s, live.path, candidate.path, fresh["probes"][month], fresh["kept"])
                should, why = truth(expected[month], probed, fresh["forgetting_probes"], fresh.get("teach", False))
                runs[month].update(probes=probed, truth=should, truth_why=why)
            runs[month]["right"] = runs[month]["outcome"] == should
            right = "" if runs[month]["right"] else f"  <- a good gate: {should}"
            print(f"seed {seed} {month}: {runs[month]['outcome']} by {runs[month]['decided_by']} "
                  f"({runs[month]['seconds']} s){right}; {why}", flush=True)
            save(name, {"suite": args.suite, "model": args.model, "seeds": seeds,
                        "train": settings.training.overrides, "replay_fraction": settings.loop.replay_fraction,
                        "expected": expected}, results)


if __name__ == "__main__":
    main()
