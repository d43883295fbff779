"""The continual loop on a laptop in about two minutes: a tiny random Qwen3 (real tokenizer), the repo's
fixtures as the month's new guidelines and SFT samples, one promoted and one rejected retraining.

    .venv/bin/python examples/loop_demo.py [OUT.png]     # default docs/loop.png
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from medloop.config import Settings  # noqa: E402
from medloop.continual import AdapterRegistry, ingest_inbox, retrain  # noqa: E402
from medloop.continual.registry import plot_loop  # noqa: E402
from medloop.testing import GUIDELINES, SFT, tiny_qwen3  # noqa: E402

home = Path(tempfile.mkdtemp(prefix="medloop-loop-"))
model = str(tiny_qwen3(home / "model"))
fast = {"max_steps": 8, "learning_rate": 5e-3, "batch_size": 4, "grad_accum": 1, "max_length": 256}
settings = Settings(home=home / "data", base_model=model, train_preset="low-mem", train_overrides=fast,
                    server_url="http://127.0.0.1:9")
(settings.inbox_dir / "guidelines").mkdir(parents=True)
(settings.inbox_dir / "sft").mkdir(parents=True)
for f in GUIDELINES.glob("*.md"):
    shutil.copy(f, settings.inbox_dir / "guidelines")
print("ingest:", ingest_inbox(settings))
shutil.copy(SFT / "sharegpt_zh_en.jsonl", settings.inbox_dir / "sft")
shutil.copy(SFT / "alpaca_zh_en.jsonl", settings.inbox_dir / "sft")
print("month 1:", retrain(settings)["outcome"])
shutil.copy(SFT / "messages_think_zh_en.jsonl", settings.inbox_dir / "sft")
settings.train_overrides = {**fast, "learning_rate": 30.0}  # a bad month: the gate must say no
print("month 2:", retrain(settings)["outcome"])
out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "loop.png"
print("picture:", plot_loop(AdapterRegistry(settings.adapters_dir), out))
