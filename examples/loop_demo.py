"""The continual loop on a laptop in a few minutes: a tiny random Qwen3 (real tokenizer), the sample
guidelines as the month's new guidelines, one promoted and one rejected retraining, each with the gate's report.

    .venv/bin/python examples/loop_demo.py [OUT.png]     # default docs/loop.png

Saves both reports to bench/results/loop_demo.json (the README's loop section is generated from it).
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from medloop.config import Settings  # noqa: E402
from medloop.continual import AdapterRegistry, ingest_inbox, retrain  # noqa: E402
from medloop.continual.registry import plot_loop  # noqa: E402
from medloop.testing import GUIDELINES, SFT, paraphrased_month, tiny_qwen3  # noqa: E402
from readme import month_report  # noqa: E402
from results import save  # noqa: E402

MONTHS: dict[str, dict] = {}


def report(month: str, result: dict) -> None:
    decision = result["decision"]
    MONTHS[month] = {"outcome": str(result["outcome"]), "version": result["version"],
                     "decided_by": decision["decided_by"], "seconds": decision["seconds"],
                     "quantized": decision["quantized"],
                     "signals": {k: {f: v.get(f) for f in ("candidate", "live", "n", "passed", "why")}
                                 for k, v in decision["signals"].items()}}
    print("\n" + month_report(month, MONTHS[month]))


home = Path(tempfile.mkdtemp(prefix="medloop-loop-"))
model = str(tiny_qwen3(home / "model"))
month = {"max_steps": 16, "learning_rate": 1e-2, "batch_size": 4, "grad_accum": 1, "max_length": 256}
# The random model's loss falls but it says nothing it learns, so the gate's new_facts would reject every month:
# off here, where what is shown is the loop (the monthly job on SmolLM2 is judged with it, docs/evaluation.md).
settings = Settings(home=home / "data", serving={"base_model": model}, loop={"server_url": "http://127.0.0.1:9"},
                    training={"preset": "low-mem", "overrides": month}, gate={"new_facts": False})
(settings.inbox_dir / "guidelines").mkdir(parents=True)
(settings.inbox_dir / "sft").mkdir(parents=True)
for f in GUIDELINES.glob("*.md"):
    shutil.copy(f, settings.inbox_dir / "guidelines")
print("ingest:", ingest_inbox(settings)["outcome"])
rows = paraphrased_month()
(settings.inbox_dir / "sft" / "month1.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
shutil.copy(SFT / "sharegpt_zh_en.jsonl", settings.inbox_dir / "sft")
report("month 1", retrain(settings, log=lambda *a: None))
shutil.copy(SFT / "messages_think_zh_en.jsonl", settings.inbox_dir / "sft")
settings.training.overrides = {**month, "learning_rate": 30.0}  # a bad month: the gate must say no
report("month 2 (learning rate 30)", retrain(settings, log=lambda *a: None))
out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "loop.png"
print("\npicture:", plot_loop(AdapterRegistry(settings.adapters_dir), out))
save("loop_demo", {"model": "tiny random Qwen3 (hidden 64, 2 layers), Qwen3 tokenizer", "train": month,
                   "preset": settings.training.preset}, MONTHS)
