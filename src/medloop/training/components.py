"""Building blocks of the QLoRA recipe, each testable alone."""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


class TermMaskingCollator:
    """Masks whole medical-term occurrences in prompts with probability p, drawn anew for every batch.

    So each epoch sees a different masking of the same sample; labels (assistant turns) are untouched.
    """

    def __init__(self, pad_token_id: int, mask_token_id: int, probability: float, seed: int = 0):
        self.base = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)
        self.mask_token_id = mask_token_id
        self.probability = probability
        self.rng = np.random.default_rng(seed)

    def __call__(self, examples: list[dict]) -> dict:
        batch = []
        for ex in examples:
            ids = list(ex["input_ids"])
            occurrences = sorted({t for t in ex.get("term_ids", []) if t})
            masked = {t for t in occurrences if self.rng.random() < self.probability}
            if masked:
                ids = [self.mask_token_id if t in masked else i for i, t in zip(ids, ex["term_ids"], strict=True)]
            batch.append({"input_ids": ids, "labels": ex["labels"]})
        return self.base(batch)


class AdaptiveClip:
    """A clip threshold that follows recent gradient norms: the running percentile of the last `window`.

    Until `warmup` norms are seen it uses the fixed `max_grad_norm`, so early spikes set no precedent.
    """

    def __init__(self, percentile: float = 90, window: int = 100, warmup: int = 10, floor: float = 1e-3):
        self.percentile, self.warmup, self.floor = percentile, warmup, floor
        self.norms: deque[float] = deque(maxlen=window)

    def threshold(self, fixed: float) -> float:
        if len(self.norms) < self.warmup:
            return fixed
        return max(self.floor, float(np.percentile(self.norms, self.percentile)))

    def update(self, norm: float) -> None:
        if math.isfinite(norm):
            self.norms.append(norm)


class MedloopSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, with the clip threshold optionally chosen by an AdaptiveClip each step."""

    adaptive_clip: AdaptiveClip | None = None
    last_clip: float | None = None

    def _clip_grad_norm(self, model):
        if self.adaptive_clip is None:
            return super()._clip_grad_norm(model)
        self.last_clip = self.adaptive_clip.threshold(self.args.max_grad_norm)
        norm = self.accelerator.clip_grad_norm_(model.parameters(), self.last_clip)
        self.adaptive_clip.update(float(norm))
        return norm


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class TrackingCallback(TrainerCallback):
    """Writes every log record to `metrics.jsonl` and to SwanLab (offline, cloud, or disabled).

    Adds what the Trainer does not log: perplexity, tokens/s (non-padding tokens), peak memory,
    and the adaptive clip threshold when one is used.
    """

    def __init__(self, run_dir: Path, swanlab_mode: str, config: dict, project: str = "medloop"):
        import os

        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.swanlab = None
        self.main = int(os.environ.get("RANK", 0)) == 0  # under DDP the first process alone records the run
        if swanlab_mode != "disabled" and self.main:
            import swanlab

            swanlab.init(project=project, experiment_name=run_dir.name, config=config, mode=swanlab_mode,
                         logdir=str(run_dir / "swanlab"))
            self.swanlab = swanlab
        self.trainer: MedloopSFTTrainer | None = None
        self._t0 = time.perf_counter()
        self._tokens0 = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not self.main:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        for key in ("loss", "eval_loss"):
            if key in logs and logs[key] < 50:
                record[key.replace("loss", "perplexity")] = math.exp(logs[key])
        if "loss" in logs:
            now, tokens = time.perf_counter(), int(state.num_input_tokens_seen or 0)
            record["tokens_per_s"] = (tokens - self._tokens0) / max(now - self._t0, 1e-9)
            self._t0, self._tokens0 = now, tokens
            record["peak_memory_mb"] = peak_memory_mb()
            if self.trainer is not None and self.trainer.last_clip is not None:
                record["clip_threshold"] = self.trainer.last_clip
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.swanlab is not None:
            self.swanlab.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=state.global_step)

    def close(self) -> None:
        """After the final evaluation, which logs after on_train_end."""
        if self.swanlab is not None:
            self.swanlab.finish()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_losses(run_dir: Path, out: Path | None = None) -> Path:
    """PNG of training and eval loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out = out or run_dir / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
