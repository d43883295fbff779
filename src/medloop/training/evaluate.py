"""Eval loss and perplexity of a base model (optionally with a LoRA adapter) on SFT data."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from medloop.models import left_pad, load
from medloop.training.data import IGNORE, load_samples, render


@torch.inference_mode()
def eval_loss(model, tokenizer, conversations: list[list[dict]], *, max_length: int = 2048,
              batch_size: int = 8) -> dict:
    """Token-weighted mean loss over assistant tokens (what training optimises), in length-sorted batches."""
    device = next(model.parameters()).device
    rows = [render(tokenizer, messages, max_length=max_length) for messages in conversations]
    rows = sorted((r for r in rows if any(x != IGNORE for x in r["labels"][1:])), key=lambda r: len(r["input_ids"]))
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        ids, mask = left_pad([r["input_ids"] for r in batch], pad, device)
        labels, _ = left_pad([r["labels"] for r in batch], IGNORE, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, :-1].float()
        target = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                   ignore_index=IGNORE, reduction="sum")
        total += float(losses)
        count += int((target != IGNORE).sum())
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if count and loss < 50 else float("nan"), "tokens": count,
            "samples": len(conversations)}


def eval_files(base_model: str, adapter: Path | None, data: list[Path], max_length: int = 2048) -> dict:
    model, tokenizer = load(base_model, adapter)
    samples, report = load_samples(data)
    return {**eval_loss(model, tokenizer, samples, max_length=max_length), "dropped": len(report.dropped)}
