"""Training benchmark (not a test): the recipe vs a naive HF Trainer that pads every sample to max_length.

    .venv/bin/python bench/training.py [--steps 30] [--max-length 512] [--quantize]

Both sides train the same tiny Qwen3 (real tokenizer) with the same LoRA on the same SFT data, each in
its own process (so peak memory is its own). Prints trained-on (non-padding) tokens/s and peak memory,
and the recipe's ratio to the baseline (target >= 1.5x tokens/s). On a GPU machine the same script
measures CUDA peak memory; pass --model to use a real Qwen3 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from medloop.testing import SFT, tiny_qwen3  # noqa: E402


def data_file(folder: Path, copies: int) -> Path:
    lines = []
    for f in sorted(SFT.glob("*.jsonl")):
        lines += f.read_text().splitlines()
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines * copies) + "\n")
    return path


def run_recipe(model: str, data: Path, out: Path, steps: int, max_length: int, quantize: bool) -> dict:
    from medloop.training import make_config, train

    config = make_config("v1", base_model=model, data=[data], output_dir=out, max_steps=steps, val_size=0,
                         max_length=max_length, batch_size=8, grad_accum=1, logging_steps=steps, quantize=quantize,
                         swanlab_mode="disabled", gradient_checkpointing=False, save_steps=10**6)
    t0 = time.perf_counter()
    train(config, log=lambda *a: None)
    return {"seconds": time.perf_counter() - t0}


def run_naive(model: str, data: Path, out: Path, steps: int, max_length: int, quantize: bool) -> dict:
    """What a first attempt looks like: every sample padded to max_length, plain HF Trainer."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from medloop.training import make_config
    from medloop.training.data import load_samples, render
    from medloop.training.recipe import attach_lora, load_base

    config = make_config("v1", base_model=model, data=[data], output_dir=out, quantize=quantize,
                         gradient_checkpointing=False)
    base, tokenizer = load_base(config.base_model, config.quantize)
    model_ = attach_lora(base, config)
    rows = []
    for messages in load_samples([data])[0]:
        r = render(tokenizer, messages, max_length=max_length)
        pad = max_length - len(r["input_ids"])
        rows.append({"input_ids": r["input_ids"] + [tokenizer.pad_token_id] * pad,
                     "attention_mask": [1] * len(r["input_ids"]) + [0] * pad, "labels": r["labels"] + [-100] * pad})
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=steps, learning_rate=2e-4,
                             optim="paged_adamw_8bit" if quantize else "adamw_torch", report_to=[], save_strategy="no",
                             logging_steps=steps, use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model_, args=args, train_dataset=Dataset.from_list(rows))
    t0 = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - t0}


def child(which: str, model: str, data: str, out: str, steps: int, max_length: int, quantize: bool) -> None:
    from medloop.training.components import peak_memory_mb
    from medloop.training.data import load_samples, render

    fn = run_recipe if which == "recipe" else run_naive
    result = fn(model, Path(data), Path(out), steps, max_length, quantize)
    # Tokens trained on: the same samples, unpadded, for both sides (steps x batch samples, cycling).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lengths = [len(render(tok, m, max_length=max_length)["input_ids"]) for m in load_samples([Path(data)])[0]]
    seen = steps * 8
    tokens = sum(lengths[i % len(lengths)] for i in range(seen))
    print(json.dumps({**result, "tokens": tokens, "peak_memory_mb": peak_memory_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--quantize", action="store_true", help="QLoRA on both sides (default: LoRA)")
    parser.add_argument("--model", default="", help="a real base model instead of the tiny random Qwen3")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.model, args.child[1], args.child[2], args.steps, args.max_length, args.quantize)
        return
    work = Path(tempfile.mkdtemp(prefix="medloop-trainbench-"))
    model = args.model or str(tiny_qwen3(work / "model"))
    data = data_file(work, copies=8)
    results = {}
    for which in ("naive", "recipe"):
        cmd = [sys.executable, __file__, "--child", which, str(data), str(work / which), "--steps", str(args.steps),
               "--max-length", str(args.max_length), "--model", model] + (["--quantize"] if args.quantize else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[which] = json.loads(out)
    for which, r in results.items():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        print(f"{which:7s} {r['tokens_per_s']:8.0f} trained tokens/s  peak memory {r['peak_memory_mb']:.0f} MB"
              f"  ({r['seconds']:.1f} s)")
    ratio = results["recipe"]["tokens_per_s"] / results["naive"]["tokens_per_s"]
    mem = results["recipe"]["peak_memory_mb"] / results["naive"]["peak_memory_mb"]
    print(f"recipe / naive: {ratio:.2f}x tokens/s (target >= 1.5x), {mem:.2f}x peak memory "
          f"[{'QLoRA' if args.quantize else 'LoRA'}, max_length {args.max_length}]")


if __name__ == "__main__":
    main()
