"""The QLoRA SFT recipe for Qwen3, top to bottom: data -> 4-bit model -> LoRA -> TRL SFTTrainer -> adapter.

Presets (presets/*.toml) are plain data mapping 1:1 onto `TrainConfig`; flags override them.
Multi-GPU: `accelerate launch -m medloop.cli train ...` or `torchrun --nproc-per-node N -m medloop.cli
train ...` run DDP; each process loads the 4-bit model on its own GPU (device_map by LOCAL_RANK).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
import tomllib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from medloop.training.data import IGNORE, DataReport, load_samples, render, split, statistics

PRESETS_DIR = Path(__file__).parent / "presets"
TERMS_FILE = Path(__file__).parent / "medical_terms.txt"
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str
    data: list[Path]
    output_dir: Path
    preset: str = "v1"
    quantize: bool = True  # QLoRA: 4-bit NF4 + double quantisation; False = plain LoRA
    init_adapter: Path | None = None  # continue training this adapter instead of a fresh one
    # LoRA
    lora_r: int = 64
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: list[str] = ALL_PROJECTIONS
    use_rslora: bool = False
    modules_to_save: list[str] = []
    # optimisation
    learning_rate: float = 2e-4
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.0
    optim: str = ""  # default: paged_adamw_8bit with QLoRA, adamw_torch otherwise
    max_grad_norm: float = 0.3
    adaptive_clip: bool = False
    clip_percentile: float = 90
    clip_window: int = 100
    epochs: float = 3
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 2
    gradient_checkpointing: bool = True
    # data
    max_length: int = 2048
    min_length: int = 2  # drop samples with fewer trained (assistant) tokens than this
    val_size: float = 0.1  # < 1: fraction; >= 1: count (e.g. 500)
    strict: bool = False
    term_masking: float = 0.0
    terms_file: Path = TERMS_FILE
    # bookkeeping
    eval_steps: int = 50
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 10
    seed: int = 42
    resume: bool = False
    swanlab_mode: Literal["offline", "cloud", "disabled"] = "offline"
    swanlab_project: str = "medloop"


def load_preset(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.exists():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
        raise ValueError(f"unknown preset '{name}': choose one of {', '.join(names)}")
    return tomllib.loads(path.read_text())


def make_config(preset: str = "v1", **overrides) -> TrainConfig:
    """Preset values, then explicit overrides (None means 'not given')."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig(preset=preset, **{**load_preset(preset), **given})


@dataclass
class TrainResult:
    output_dir: Path
    train_loss: float
    eval_loss: float | None
    steps: int
    report: DataReport
    stats: dict


def _compute_dtype() -> torch.dtype:
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_base(config: TrainConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict = {"dtype": _compute_dtype()}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    if config.quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=_compute_dtype(),
        )
    model = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    model.config.use_cache = False
    return model, tokenizer


def attach_lora(model, config: TrainConfig):
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if config.quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
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
                report.dropped.append(("", 0, "too short: fewer trained tokens than min_length after truncation"))
                continue
            rows.append(row)
        return rows

    return tokenise(train_s), tokenise(val_s), report


def train(config: TrainConfig, log=print) -> TrainResult:
    from datasets import Dataset
    from trl import SFTConfig

    from medloop.training.components import (
        AdaptiveClip,
        MedloopSFTTrainer,
        TermMaskingCollator,
        TrackingCallback,
        plot_losses,
    )

    started = time.time()
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)

    # 1. data
    model, tokenizer = load_base(config)
    train_rows, val_rows, report = prepare_data(config, tokenizer)
    stats = {"train": statistics(train_rows), "validation": statistics(val_rows), "layouts": dict(report.layouts),
             "dropped": dict(report.reasons())}
    for path, line, reason in report.dropped[:20]:
        if path:
            log(f"skipped {path}:{line}: {reason}")
    log(f"data: {report.read} read, {len(report.dropped)} dropped {dict(report.reasons())}, "
        f"{len(train_rows)} train / {len(val_rows)} validation; {json.dumps(stats['train'])}")
    if not train_rows:
        raise ValueError("no training samples left after validation and filtering")

    # 2. model: 4-bit base + LoRA
    model = attach_lora(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {config.base_model} ({'QLoRA 4-bit NF4' if config.quantize else 'LoRA'}), {trainable:,} trainable")

    # 3. trainer
    columns = ["input_ids", "labels"] + (["term_ids"] if config.term_masking > 0 else [])
    train_ds = Dataset.from_list([{k: r[k] for k in columns} for r in train_rows])
    val_ds = Dataset.from_list([{k: r[k] for k in ("input_ids", "labels")} for r in val_rows]) if val_rows else None
    optim = config.optim or ("paged_adamw_8bit" if config.quantize else "adamw_torch")
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        optim=optim,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        gradient_checkpointing=False,  # already set up by attach_lora
        bf16=_compute_dtype() == torch.bfloat16,
        fp16=_compute_dtype() == torch.float16,
        eval_strategy="steps" if val_ds is not None else "no",
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
    collator = None
    if config.term_masking > 0:
        mask_id = tokenizer.convert_tokens_to_ids("<|fim_pad|>")
        if mask_id is None or mask_id == tokenizer.unk_token_id:
            mask_id = tokenizer.pad_token_id
        collator = TermMaskingCollator(tokenizer.pad_token_id, mask_id, config.term_masking, config.seed)
    tracking = TrackingCallback(out, config.swanlab_mode, config.model_dump(mode="json"), config.swanlab_project)
    trainer = MedloopSFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        data_collator=collator, callbacks=[tracking],
    )
    if config.adaptive_clip:
        trainer.adaptive_clip = AdaptiveClip(config.clip_percentile, config.clip_window)
    tracking.trainer = trainer

    # 4. train (resuming from the newest checkpoint when asked and one exists)
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resume = str(checkpoints[-1]) if config.resume and checkpoints else None
    if config.resume and not resume:
        log("resume: no checkpoint yet, starting fresh")
    result = trainer.train(resume_from_checkpoint=resume)
    eval_loss = trainer.evaluate()["eval_loss"] if val_ds is not None else None
    tracking.close()

    # 5. the adapter folder: weights, config, tokenizer, and what made them
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    train_loss = float(result.training_loss)
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

    model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=_compute_dtype())
    merged = model.merge_and_unload()
    merged.save_pretrained(output)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(output)
    return output
