"""Eval loss and perplexity of a base model (optionally with a LoRA adapter) on SFT data."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from medloop.config import resolve_model
from medloop.training.data import IGNORE, load_samples, render


def load_for_eval(base_model: str, adapter: Path | None = None):
    """Base model by path, hub id, `.gguf` file or the embedded default (dequantised), optionally + a LoRA."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve_model(base_model)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(adapter) if adapter else AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), tokenizer


@torch.inference_mode()
def eval_loss(model, tokenizer, conversations: list[list[dict]], *, max_length: int = 2048) -> dict:
    """Token-weighted mean loss over assistant tokens (what training optimises)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for messages in conversations:
        row = render(tokenizer, messages, max_length=max_length)
        labels = torch.tensor([row["labels"]], device=device)
        n = int((labels[:, 1:] != IGNORE).sum())
        if n == 0:
            continue
        out = model(input_ids=torch.tensor([row["input_ids"]], device=device), labels=labels)
        total += float(out.loss) * n
        count += n
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if count and loss < 50 else float("nan"), "tokens": count,
            "samples": len(conversations)}


def eval_files(base_model: str, adapter: Path | None, data: list[Path], max_length: int = 2048) -> dict:
    model, tokenizer = load_for_eval(base_model, adapter)
    samples, report = load_samples(data)
    return {**eval_loss(model, tokenizer, samples, max_length=max_length), "dropped": len(report.dropped)}
