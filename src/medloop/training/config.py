"""The recipe's settings as data: `TrainConfig`, its presets (presets/*.toml) and overrides. No torch here,
so the CLI can build its flags from these fields without loading a model stack."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PRESETS_DIR = Path(__file__).parent / "presets"
TERMS_FILE = Path(__file__).parent / "medical_terms.txt"
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SMALL_MODEL = 1_000_000_000  # parameters: preset "auto" is `small` below, `low-mem` from here on


class TrainConfig(BaseModel):
    """Every knob of the recipe. Presets (presets/*.toml) set some; `medloop train --FIELD VALUE` sets any."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="base model: path or hub id")
    data: list[Path] = Field(description="SFT JSONL/JSON files")
    output_dir: Path = Field(description="adapter output folder")
    preset: str = Field("v1", description="v1 | v2 | v3 | low-mem | small (presets/*.toml)")
    quantize: bool = Field(True, description="QLoRA: 4-bit NF4 + double quantisation; off = plain LoRA")
    init_adapter: Path | None = Field(None, description="continue training this adapter instead of a fresh one")
    # LoRA
    lora_r: int = Field(64, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(ALL_PROJECTIONS, description="projections that get LoRA")
    use_rslora: bool = False
    modules_to_save: list[str] = Field([], description="modules trained in full, e.g. embed_tokens")
    # optimisation
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    optim: str = Field("", description="default: paged_adamw_8bit with QLoRA on CUDA, adamw_torch otherwise")
    max_grad_norm: float = Field(0.3, gt=0)
    adaptive_clip: bool = Field(False, description="clip at a running percentile of recent gradient norms")
    clip_percentile: float = Field(90, gt=0, le=100)
    clip_window: int = Field(100, ge=1)
    epochs: float = Field(3, gt=0)
    max_steps: int = Field(-1, description="stop after this many steps (-1: run the epochs)")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(2, ge=1)
    gradient_checkpointing: bool = True
    memory_budget_gb: float = Field(0, ge=0, description="GPU: split batch_size x grad_accum into the largest "
                                    "micro-batch whose measured step fits this many GB (0: as configured)")
    # data
    max_length: int = Field(2048, ge=8)
    min_length: int = Field(2, description="drop samples with fewer trained (assistant) tokens than this")
    val_size: float = Field(0.1, ge=0, description="< 1: fraction; >= 1: count (e.g. 500)")
    strict: bool = Field(False, description="fail on the first malformed line instead of skipping it")
    term_masking: float = Field(0.0, ge=0, lt=1, description="share of medical-term occurrences masked in prompts")
    terms_file: Path = TERMS_FILE
    # bookkeeping
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    seed: int = 42
    resume: bool = Field(False, description="continue from the last checkpoint in output_dir")
    swanlab_mode: Literal["offline", "cloud", "disabled"] = "offline"
    swanlab_project: str = "medloop"


def load_preset(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.exists():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
        raise ValueError(f"unknown preset '{name}': choose one of {', '.join(names)}")
    return tomllib.loads(path.read_text())


def make_config(preset: str = "v1", **overrides) -> TrainConfig:
    """Preset values, then explicit overrides (None means 'not given'). Preset "auto": `small` for a base model
    under a billion parameters, `low-mem` (QLoRA for small GPUs) otherwise."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if preset == "auto":
        from medloop.models import parameter_count  # loads torch: only when asked

        preset = "small" if parameter_count(given["base_model"]) < SMALL_MODEL else "low-mem"
    return TrainConfig(preset=preset, **{**load_preset(preset), **given})


