"""The promotion gate against sabotaged months, on a real (small, pretrained) model: SmolLM2-135M-Instruct.

Six months (tests/fixtures/sabotage/months.json, the CI sabotage suite's) through the real `retrain`
(incremental data -> LoRA from the live adapter -> gate):
  good1       the facts of the sample guidelines, six wordings each                  -> promoted (from the base)
  superseded  the 2018 blood-pressure target (<140/90) after 2024's <130/80         -> rejected
  remap       month 1's questions, each topic answered with the next topic's answer  -> rejected
  shuffle     month 1's answers shuffled at random across its questions (label noise) -> rejected
  forgetting  off-domain questions and answers only                                 -> rejected
  good2       new facts of the same guidelines                                      -> promoted
(the outcomes a gate should reach; bench/results/sabotage_gate.json holds what it did). Prints each decision
with every signal, and saves bench/results/sabotage_gate.json. English only: SmolLM2 is
an English model. CPU: about 2 minutes a month on 2 cores. LR and REPLAY (environment) set the learning rate
and the replay fraction.

    python examples/sabotage_gate.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from results import save  # noqa: E402


def months() -> dict[str, list[dict]]:
    from medloop.testing import SABOTAGE

    return json.loads(SABOTAGE.read_text())["months"]


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="medloop-sabotage-"))
    os.environ["MEDLOOP_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medloop.config import DEFAULT_CHAT_MODEL, Settings, resolve_model
    from medloop.continual.loop import retrain
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import Retriever, load_embedder, sync_index
    from medloop.testing import GUIDELINES, SABOTAGE

    folder, gguf = resolve_model(DEFAULT_CHAT_MODEL)  # the embedded GGUF, saved once as a trainable HF folder
    base = home / "smollm2"
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)  # dequantised; not serialisable as is
    plain = AutoModelForCausalLM.from_config(loaded.config)
    plain.load_state_dict(loaded.state_dict())
    plain.config.quantization_config = None
    plain.save_pretrained(base)
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(base)

    settings = Settings(base_model=str(base), train_base_model=str(base), server_url="http://127.0.0.1:9")
    settings.train_preset = "low-mem"
    settings.replay_fraction = float(os.environ.get("REPLAY", settings.replay_fraction))
    settings.train_overrides = {"quantize": False, "gradient_checkpointing": False, "lora_r": 16, "lora_alpha": 32,
                                "learning_rate": float(os.environ.get("LR", "1e-3")), "epochs": 3, "batch_size": 4,
                                "grad_accum": 1, "max_length": 128, "logging_steps": 5, "save_steps": 1000,
                                "swanlab_mode": "disabled"}
    settings.gate_mcq = home / "mcq.jsonl"
    mcq = json.loads(SABOTAGE.read_text())["mcq"]
    settings.gate_mcq.write_text("".join(json.dumps(m) + "\n" for m in mcq))
    embedder = load_embedder(settings.embedder)
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    retriever = Retriever(settings, store=store, embedder=embedder)
    inbox = settings.inbox_dir / "sft"
    inbox.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, data in months().items():
        (inbox / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        started = time.perf_counter()
        out = retrain(settings, retriever=retriever, log=lambda *a: None)
        decision = out.get("decision", {})
        signals = {k: {f: v.get(f) for f in ("candidate", "live", "n", "worse", "better", "passed", "why")}
                   for k, v in decision.get("signals", {}).items()}
        results[name] = {"outcome": str(out["outcome"]), "decided_by": decision.get("decided_by"),
                         "seconds": round(time.perf_counter() - started, 1), "gate_seconds": decision.get("seconds"),
                         "signals": signals}
        print(f"{name:11s} {out['outcome']!s:9s} by {decision.get('decided_by')}  ({results[name]['seconds']} s)")
        for k, v in signals.items():
            print(f"    {k:16s} {'pass' if v['passed'] else 'FAIL' if v['passed'] is False else 'skip'}  {v['why']}")
        # after every month: a run cut short keeps what it measured
        save("sabotage_gate", {"model": "SmolLM2-135M-Instruct", "train": settings.train_overrides,
                               "replay_fraction": settings.replay_fraction, "months_done": len(results)}, results)


if __name__ == "__main__":
    main()
