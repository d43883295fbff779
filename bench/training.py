"""Training benchmark (not a test): `medloop train` against the seed's way and a strong baseline, one run.

    python bench/training.py [--steps 12] [--preset v1] [--max-length 2048] [--quantize] [--model PATH]

Three sides train the same model with the same LoRA (the preset's rank, alpha, projections), the same
effective batch, optimizer and max_length, on the same samples, each in its own process (so peak memory is
its own):
- seed: HF `Trainer`, every sample padded to max_length (the seed's way);
- trl: TRL `SFTTrainer` with dynamic padding (pads each batch to its longest sample), the same pre-tokenised
  rows and labels: what a competent user writes;
- recipe: `medloop train --preset P` (length-grouped batches; on a GPU the micro-batch chosen to fill
  `memory_budget_gb`).
Samples have realistic rendered lengths: the sample SFT conversations, their answers extended with real
guideline sentences to lengths drawn from the quantiles measured on medical SFT data (p10/p50/p90 =
103/312/631 tokens). Prints samples/s, trained (non-padding) tokens/s and peak memory side by side with
ratios; saves bench/results/training.json (training-gpu.json on a GPU). On CPU the tiny random Qwen3 is the
model (its 151k-token output layer dominates, as in a real Qwen3 at these sizes); on a GPU pass --model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.testing import GUIDELINES, SFT, tiny_qwen3  # noqa: E402
from results import save  # noqa: E402

QUANTILES = [(0.0, 60), (0.1, 103), (0.5, 312), (0.9, 631), (1.0, 1100)]  # rendered tokens


def draw_length(rng: random.Random) -> int:
    u = rng.random()
    for (q0, n0), (q1, n1) in zip(QUANTILES, QUANTILES[1:], strict=False):
        if u <= q1:
            return int(n0 + (n1 - n0) * (u - q0) / (q1 - q0))
    return QUANTILES[-1][1]


def data_file(folder: Path, tokenizer_path: str, samples: int, seed: int = 0) -> tuple[Path, list[int]]:
    """`samples` conversations of realistic length (messages layout) and their rendered lengths."""
    from transformers import AutoTokenizer

    from medloop.training.data import load_samples, render

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    rng = random.Random(seed)
    sentences = []
    for f in sorted(GUIDELINES.glob("*.md")):
        body = f.read_text("utf-8").split("---", 2)[2]
        sentences += [s.strip() for s in re.split(r"(?<=[。；.])\s*", body) if s.strip() and not s.startswith("#")]
    conversations = load_samples([SFT / "messages_think_zh_en.jsonl"])[0]
    rows, lengths = [], []
    for i in range(samples):
        messages = [dict(m) for m in conversations[i % len(conversations)]]
        target, answer = draw_length(rng), messages[-1]["content"]
        while len(render(tok, messages, max_length=10**6)["input_ids"]) < target:
            answer += rng.choice(sentences)
            messages[-1]["content"] = answer
        rows.append(json.dumps({"messages": messages}, ensure_ascii=False))
        lengths.append(len(render(tok, messages, max_length=10**6)["input_ids"]))
    path = folder / "data.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path, lengths


def recipe_config(args, model: str, data: Path, out: Path):
    from medloop.training import make_config

    budget = {} if args.memory_budget_gb is None else {"memory_budget_gb": args.memory_budget_gb}
    return make_config(args.preset, base_model=model, data=[data], output_dir=out, max_steps=args.steps, val_size=0,
                       max_length=args.max_length, quantize=args.quantize, logging_steps=args.steps,
                       swanlab_mode="disabled", save_steps=10**6, **budget)


def tokenised(config) -> list[dict]:
    """The recipe's own rows (input_ids, labels): every side trains on exactly these."""
    from transformers import AutoTokenizer

    from medloop.training.recipe import prepare_data

    tok = AutoTokenizer.from_pretrained(config.base_model)
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in prepare_data(config, tok)[0]]


def run_recipe(config) -> None:
    from medloop.training import train

    train(config, log=lambda *a: None)


def run_baseline(config, which: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    from medloop.training.recipe import attach_lora, load_base

    base, tokenizer = load_base(config.base_model, config.quantize)
    model = attach_lora(base, config)
    rows = tokenised(config)
    common = dict(output_dir=str(config.output_dir), per_device_train_batch_size=config.batch_size,
                  gradient_accumulation_steps=config.grad_accum, max_steps=config.max_steps,
                  learning_rate=config.learning_rate, optim="paged_adamw_8bit" if config.quantize else "adamw_torch",
                  max_grad_norm=config.max_grad_norm, report_to=[], save_strategy="no", logging_steps=config.max_steps,
                  use_cpu=not torch.cuda.is_available(), disable_tqdm=True, bf16=torch.cuda.is_available())
    if which == "seed":
        padded = []
        for r in rows:
            pad = config.max_length - len(r["input_ids"])
            padded.append({"input_ids": r["input_ids"] + [tokenizer.pad_token_id] * pad,
                           "attention_mask": [1] * len(r["input_ids"]) + [0] * pad,
                           "labels": r["labels"] + [-100] * pad})
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=Dataset.from_list(padded))
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, max_length=config.max_length),
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()


def child(which: str, args) -> None:
    from medloop.training.components import peak_memory_mb

    config = recipe_config(args, args.model, Path(args.data), Path(args.out))
    t0 = time.perf_counter()
    run_recipe(config) if which == "recipe" else run_baseline(config, which)
    seconds = time.perf_counter() - t0
    split = {}
    if which == "recipe":  # the split the memory budget chose
        chosen = json.loads((config.output_dir / "medloop_run.json").read_text())["config"]
        split = {"micro_batch": chosen["batch_size"], "grad_accum": chosen["grad_accum"]}
    print(json.dumps({"seconds": seconds, "peak_memory_mb": peak_memory_mb(), **split}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--preset", default="v1")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--quantize", action="store_true", help="QLoRA (4-bit NF4) on every side")
    parser.add_argument("--model", default="", help="a real (or Qwen3-shaped) base model; default: the tiny Qwen3")
    parser.add_argument("--sides", nargs="+", default=["seed", "trl", "recipe"])
    parser.add_argument("--memory-budget-gb", type=float, default=None, help="the recipe's budget (default: preset's)")
    parser.add_argument("--name", default="", help="the result file (default: training, or training-gpu on a GPU)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    import torch

    from medloop.training import make_config

    work = Path(tempfile.mkdtemp(prefix="medloop-trainbench-"))
    model = args.model or str(tiny_qwen3(work / "model"))
    preset = make_config(args.preset, base_model=model, data=[], output_dir=work)
    effective = preset.batch_size * preset.grad_accum
    samples = args.steps * effective
    data, lengths = data_file(work, model, samples)
    trained_tokens = sum(min(n, args.max_length) for n in lengths)
    results = {}
    for which in args.sides:
        cmd = [sys.executable, __file__, "--child", which, "--data", str(data), "--out", str(work / which),
               "--steps", str(args.steps), "--preset", args.preset, "--max-length", str(args.max_length),
               "--model", model] + (["--quantize"] if args.quantize else []) + \
            ([] if args.memory_budget_gb is None else ["--memory-budget-gb", str(args.memory_budget_gb)])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{which} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["samples_per_s"] = round(samples / r["seconds"], 3)
        r["trained_tokens_per_s"] = round(trained_tokens / r["seconds"], 1)
        results[which] = r
        print(f"{which:7s} {r['samples_per_s']:7.2f} samples/s {r['trained_tokens_per_s']:9.0f} trained tokens/s  "
              f"peak {r['peak_memory_mb']:.0f} MB  ({r['seconds']:.1f} s)")
    for base in ("seed", "trl"):
        if base in results and "recipe" in results:
            ratio = results["recipe"]["samples_per_s"] / results[base]["samples_per_s"]
            results[f"recipe_vs_{base}"] = round(ratio, 2)
            print(f"recipe / {base}: {ratio:.2f}x samples/s")
    lengths.sort()
    settings = {"preset": args.preset, "steps": args.steps, "samples": samples, "effective_batch": effective,
                "micro_batch": preset.batch_size, "max_length": args.max_length, "quantize": args.quantize,
                "lora_r": preset.lora_r, "model": args.model or "tiny random Qwen3 (hidden 64, 2 layers)",
                "lengths_p10_p50_p90": [lengths[len(lengths) // 10], lengths[len(lengths) // 2],
                                        lengths[len(lengths) * 9 // 10]]}
    save(args.name or ("training-gpu" if torch.cuda.is_available() else "training"), settings, results)


if __name__ == "__main__":
    main()
