"""The QLoRA SFT recipe for Qwen3, top to bottom: data -> 4-bit model -> LoRA -> TRL SFTTrainer -> adapter.

Presets (presets/*.toml) are plain data mapping 1:1 onto `TrainConfig`; flags override them.
Multi-GPU: `accelerate launch -m medloop.cli train ...` or `torchrun --nproc-per-node N -m medloop.cli
train ...` run DDP; each process loads the 4-bit model on its own GPU (device_map by LOCAL_RANK).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from medloop import models
from medloop.training.config import TrainConfig
from medloop.training.data import IGNORE, DataReport, load_samples, render, split, statistics


@dataclass
class TrainResult:
    output_dir: Path
    train_loss: float
    eval_loss: float | None
    steps: int
    report: DataReport
    stats: dict


def load_base(base_model: str, quantize: bool):
    """The base model as training sees it (4-bit NF4 for QLoRA, on this process's GPU), and its tokenizer."""
    return models.load_base(base_model, quantize=quantize, training=True), models.load_tokenizer(base_model)


def attach_lora(model, config: TrainConfig):
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if config.quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if config.init_adapter:
        return PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.target_modules, use_rslora=config.use_rslora,
        modules_to_save=config.modules_to_save or None, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def prepare_data(config: TrainConfig, tokenizer) -> tuple[list[dict], list[dict], DataReport]:
    samples, report = load_samples(config.data, strict=config.strict)
    terms = None
    if config.term_masking > 0:
        terms = [t.strip() for t in config.terms_file.read_text().splitlines() if t.strip() and not t.startswith("#")]
    train_s, val_s = split(samples, config.val_size, config.seed)

    def tokenise(conversations):
        rows = []
        for messages in conversations:
            row = render(tokenizer, messages, max_length=config.max_length, terms=terms)
            if sum(1 for x in row["labels"] if x != IGNORE) < config.min_length:
                asked = next((m["content"] for m in messages if m["role"] == "user"), "")
                why = f"cut off: the answer starts past max_length {config.max_length} tokens (a long prompt or " \
                    "evidence)" if row["truncated"] else f"too short: fewer trained tokens than min_length " \
                    f"{config.min_length}"
                report.dropped.append(("", 0, f"{why}: {asked[:80]!r}"))
                continue
            rows.append(row)
        return rows

    return tokenise(train_s), tokenise(val_s), report


def train(config: TrainConfig, log=print) -> TrainResult:
    """The recipe, top to bottom: data -> 4-bit base + LoRA -> TRL SFTTrainer -> train -> the adapter folder."""
    started = time.time()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_base(config.base_model, config.quantize)
    train_rows, val_rows, report, stats = _setup_data(config, tokenizer, log)
    model = _setup_model(model, config, log)
    config = fit_micro_batch(config, model, tokenizer, train_rows, log)
    trainer, tracking = _setup_trainer(config, model, tokenizer, train_rows, val_rows)
    result = trainer.train(resume_from_checkpoint=_resume_checkpoint(config, log))
    eval_loss = _final_eval_loss(trainer) if val_rows else None
    tracking.close()
    return _write_adapter(config, trainer, tokenizer, report, stats, float(result.training_loss), eval_loss, started)


def _setup_data(config: TrainConfig, tokenizer, log) -> tuple[list[dict], list[dict], DataReport, dict]:
    train_rows, val_rows, report = prepare_data(config, tokenizer)
    stats = {"train": statistics(train_rows), "validation": statistics(val_rows), "layouts": dict(report.layouts),
             "dropped": dict(report.reasons())}
    for path, line, reason in report.dropped[:20]:
        log(f"skipped {path}:{line}: {reason}" if path else f"skipped: {reason}")
    log(f"data: {report.read} read, {len(report.dropped)} dropped {dict(report.reasons())}, "
        f"{len(train_rows)} train / {len(val_rows)} validation; {json.dumps(stats['train'])}")
    if not train_rows:
        raise ValueError("no training samples left after validation and filtering")
    return train_rows, val_rows, report, stats


def _setup_model(model, config: TrainConfig, log):
    model = attach_lora(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {config.base_model} ({'QLoRA 4-bit NF4' if config.quantize else 'LoRA'}), {trainable:,} trainable")
    return model


def choose_micro_batch(effective: int, budget_bytes: int, peak_bytes: Callable[[int], float]) -> int:
    """The largest divisor of the effective batch whose measured peak fits the budget (1 if none does)."""
    for micro in sorted((m for m in range(1, effective + 1) if effective % m == 0), reverse=True):
        if peak_bytes(micro) <= budget_bytes:
            return micro
    return 1


def fit_micro_batch(config: TrainConfig, model, tokenizer, rows: list[dict], log) -> TrainConfig:
    """Fill the memory budget while keeping the effective batch. At medical-SFT lengths a 4-bit step is bound
    by kernel launches and dequantisation, not arithmetic, so fewer, larger micro-batches run faster at the same
    effective batch (bench/gpu.py measures it). The peak of each candidate is measured, not guessed: one forward
    and backward pass over the longest training samples (group_by_length puts them in one batch), plus the
    optimizer's state. On CPU the configured split stays."""
    effective = config.batch_size * config.grad_accum
    if not config.memory_budget_gb or not torch.cuda.is_available() or not rows:
        log(f"batch: micro-batch {config.batch_size} x accumulation {config.grad_accum} (as configured)")
        return config
    longest = sorted(rows, key=lambda r: len(r["input_ids"]), reverse=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer_bytes = trainable * (2 if config.quantize else 8)  # 8-bit paged AdamW: two 1-byte moments

    def peak_bytes(micro: int) -> float:
        batch = [longest[i % len(longest)] for i in range(micro)]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((micro, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((micro, width), -100, dtype=torch.long)
        mask = torch.zeros((micro, width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        device = next(model.parameters()).device
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model.train()  # gradient checkpointing acts in training mode only
        try:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss.backward()
            return torch.cuda.max_memory_allocated() + optimizer_bytes
        except torch.cuda.OutOfMemoryError:
            return float("inf")
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    budget = int(config.memory_budget_gb * 2**30)
    micro = choose_micro_batch(effective, budget, peak_bytes)
    measured = peak_bytes(micro) / 2**30
    log(f"batch: micro-batch {micro} x accumulation {effective // micro} (effective {effective}; measured peak "
        f"{measured:.1f} GB of the {config.memory_budget_gb:g} GB budget)")
    return config.model_copy(update={"batch_size": micro, "grad_accum": effective // micro})


def _sft_args(config: TrainConfig, evaluate: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(config.output_dir / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        optim=config.optim or ("paged_adamw_8bit" if config.quantize and torch.cuda.is_available() else "adamw_torch"),
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        gradient_checkpointing=False,  # already set up by attach_lora
        bf16=models.compute_dtype() == torch.bfloat16,
        fp16=models.compute_dtype() == torch.float16,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_length,
        # Samples of similar length share a batch: far less padding than random batches.
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # keep term_ids for the masking collator
        include_num_input_tokens_seen="non_padding",
        report_to=[],
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _setup_trainer(config: TrainConfig, model, tokenizer, train_rows: list[dict], val_rows: list[dict]):
    from datasets import Dataset

    from medloop.training.components import AdaptiveClip, MedloopSFTTrainer, TermMaskingCollator, TrackingCallback

    columns = ["input_ids", "labels"] + (["term_ids"] if config.term_masking > 0 else [])
    train_ds = Dataset.from_list([{k: r[k] for k in columns} for r in train_rows])
    val_ds = Dataset.from_list([{k: r[k] for k in ("input_ids", "labels")} for r in val_rows]) if val_rows else None
    collator = None
    if config.term_masking > 0:
        mask_id = tokenizer.convert_tokens_to_ids("<|fim_pad|>")
        if mask_id is None or mask_id == tokenizer.unk_token_id:
            mask_id = tokenizer.pad_token_id
        collator = TermMaskingCollator(tokenizer.pad_token_id, mask_id, config.term_masking, config.seed)
    tracking = TrackingCallback(config.output_dir, config.swanlab_mode, config.model_dump(mode="json"),
                                config.swanlab_project)
    trainer = MedloopSFTTrainer(
        model=model, args=_sft_args(config, val_ds is not None), train_dataset=train_ds, eval_dataset=val_ds,
        processing_class=tokenizer, data_collator=collator, callbacks=[tracking],
    )
    if config.adaptive_clip:
        trainer.adaptive_clip = AdaptiveClip(config.clip_percentile, config.clip_window)
    tracking.trainer = trainer
    return trainer, tracking


def _resume_checkpoint(config: TrainConfig, log) -> str | None:
    """The newest checkpoint when --resume is asked and one exists."""
    if not config.resume:
        return None
    checkpoints = sorted((config.output_dir / "checkpoints").glob("checkpoint-*"),
                         key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        log("resume: no checkpoint yet, starting fresh")
        return None
    return str(checkpoints[-1])


def _final_eval_loss(trainer) -> float:
    """The eval loss at the last step: taken from the log when the schedule already evaluated there, so the
    final evaluation never runs (and is never logged) twice."""
    step = trainer.state.global_step
    logged = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == step]
    return logged[-1] if logged else trainer.evaluate()["eval_loss"]


def _write_adapter(config: TrainConfig, trainer, tokenizer, report: DataReport, stats: dict, train_loss: float,
                   eval_loss: float | None, started: float) -> TrainResult:
    """The adapter folder: weights, config, tokenizer, and what made them (medloop_run.json, loss.png). Under DDP
    every process trained the same adapter on its own shard; the first writes it, once."""
    from medloop.training.components import plot_losses

    out = config.output_dir
    world = trainer.args.world_size
    if not trainer.is_world_process_zero():
        return TrainResult(out, train_loss, eval_loss, trainer.state.global_step, report, stats)
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    run = {
        "base_model": config.base_model,
        "init_adapter": str(config.init_adapter) if config.init_adapter else None,
        "data": report.files,
        "preset": config.preset,
        "config": config.model_dump(mode="json"),
        "statistics": stats,
        "train_loss": train_loss,
        "train_perplexity": math.exp(train_loss) if train_loss < 50 else None,
        "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss) if eval_loss is not None and eval_loss < 50 else None,
        "steps": trainer.state.global_step,
        "processes": world,  # DDP: each trained on 1/world of the data per epoch
        "duration_s": round(time.time() - started, 1),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", "trl", "bitsandbytes")},
    }
    (out / "medloop_run.json").write_text(json.dumps(run, indent=2, ensure_ascii=False))
    plot_losses(out)
    return TrainResult(out, train_loss, eval_loss, trainer.state.global_step, report, stats)


def merge(adapter: Path, output: Path) -> Path:
    """Fold a LoRA adapter into full-precision base weights, for deployments that want no adapter."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=models.compute_dtype())
    merged = model.merge_and_unload()
    merged.save_pretrained(output)
    base = model.peft_config["default"].base_model_name_or_path
    AutoTokenizer.from_pretrained(models.tokenizer_of(adapter, base)).save_pretrained(output)
    return output
