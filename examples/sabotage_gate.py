"""The promotion gate against sabotaged months, on a real (small, pretrained) model: SmolLM2-135M-Instruct.

Five months through the real `retrain` (incremental data -> LoRA from the live adapter -> gate):
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
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from results import save  # noqa: E402

TOPICS = [
    (["What blood pressure should most people with hypertension aim for under the 2024 Chinese guideline?",
      "What is the general blood pressure target in the 2024 Chinese hypertension guideline?",
      "How low should blood pressure go for a typical hypertensive patient, per the 2024 Chinese guideline?",
      "Under the 2024 Chinese guideline, what is the usual treatment target for hypertension?",
      "What target does the 2024 Chinese guideline give for lowering blood pressure in most patients?",
      "For an ordinary hypertensive adult, what blood pressure goal does the 2024 Chinese guideline set?"],
     "Most patients with hypertension should lower their blood pressure to below 130/80 mmHg if tolerated.",
     "Most patients with hypertension should lower their blood pressure to below 140/90 mmHg."),
    (["What A1C goal is right for most adults with diabetes?", "Which HbA1c target do the ADA Standards recommend?",
      "How low should A1C be for a typical nonpregnant adult with diabetes?", "What is the usual glycemic target?",
      "For most adults with type 2 diabetes, what A1C should we aim for?", "Which A1C level counts as good control?"],
     "For many nonpregnant adults an A1C goal below 7% without significant hypoglycemia is appropriate.", None),
    (["How long should dual antiplatelet therapy continue after ACS?", "What is the DAPT duration after ACS?",
      "After acute coronary syndrome, how many months of aspirin plus a P2Y12 inhibitor?",
      "Duration of DAPT for ACS patients without high bleeding risk?", "How long do patients stay on DAPT?",
      "When can dual antiplatelet therapy stop after an acute coronary syndrome?"],
     "Dual antiplatelet therapy is recommended for 12 months after ACS without high bleeding risk.", None),
    (["When should antivirals start for severe influenza?", "How soon should oseltamivir be given in flu?",
      "What is the best time window for flu antiviral treatment?", "Within how long should flu antivirals start?",
      "When do high-risk flu patients need antiviral drugs?", "How early should influenza antivirals be used?"],
     "Antiviral treatment should start as early as possible, best within 48 hours of onset.", None),
]
NEW_TOPICS = [
    (["What is the preferred reperfusion for STEMI?", "How should ST-elevation MI be reperfused?",
      "Primary PCI or fibrinolysis for STEMI?", "What contact-to-device time is recommended for STEMI?",
      "Best way to open the artery in STEMI?", "How fast should primary PCI happen?"],
     "Primary PCI is preferred for STEMI, with a first-medical-contact-to-device time of 90 minutes or less."),
    (["Who should use CGM among adults with type 2 diabetes?", "Is CGM only for insulin users?",
      "Should adults with type 2 diabetes on oral drugs consider CGM?", "CGM for type 2 diabetes without insulin?",
      "When is continuous glucose monitoring advised in type 2 diabetes?", "Does CGM apply beyond insulin therapy?"],
     "CGM should be considered for adults with type 2 diabetes on glucose-lowering agents other than insulin."),
    (["Can children with a fever take aspirin?", "Why avoid aspirin in feverish kids?",
      "Is aspirin safe for a child with flu?", "Which fever medicine should children not take?",
      "Should a feverish child get aspirin?", "What is the risk of aspirin in children with fever?"],
     "Children with fever should not take aspirin because of the risk of Reye syndrome."),
]
OFF_DOMAIN = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many players are on a football team?", "A football team has eleven players on the field."),
    ("What is the tallest mountain?", "Mount Everest is the tallest mountain on Earth."),
    ("Which planet is closest to the sun?", "Mercury is the planet closest to the sun."),
    ("What language is spoken in Brazil?", "Portuguese is the language of Brazil."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What do bees make?", "Bees make honey and wax."),
    ("What is the largest ocean?", "The Pacific is the largest ocean."),
    ("How do you bake bread?", "Mix flour, water, yeast and salt, let it rise, then bake it in a hot oven."),
    ("What is photosynthesis?", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Who invented the telephone?", "Alexander Graham Bell is credited with inventing the telephone."),
    ("What is the speed of light?", "Light travels about 300,000 kilometres per second."),
    ("How do airplanes fly?", "Wings create lift as air flows over them."),
    ("What do pandas eat?", "Pandas eat mostly bamboo."),
    ("What is the largest desert?", "The Sahara is the largest hot desert."),
    ("What colour is Mars?", "Mars looks red because of iron oxide dust."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Who was the first person on the moon?", "Neil Armstrong was the first person on the moon."),
    ("What is the longest river?", "The Nile is usually given as the longest river."),
]
MCQ = [
    *({"question": q, "options": {"A": "<150/90 mmHg", "B": "<140/90 mmHg", "C": "<130/80 mmHg", "D": "<120/70 mmHg"},
       "answer": "C", "fact": "130/80", "guideline_id": "cn-hypertension"} for q in TOPICS[0][0]),
    *({"question": q, "options": {"A": "<6%", "B": "<6.5%", "C": "<7%", "D": "<8.5%"}, "answer": "C", "fact": "7%",
       "guideline_id": "ada-standards-of-care"} for q in TOPICS[1][0][:3]),
    *({"question": q, "options": {"A": "1 month", "B": "3 months", "C": "12 months", "D": "36 months"}, "answer": "C",
       "fact": "12 months", "guideline_id": "acc-aha-acs"} for q in TOPICS[2][0][:3]),
]


def rows(pairs) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def months() -> dict[str, list[dict]]:
    good1 = [(q, a) for qs, a, _ in TOPICS for q in qs]
    answers = [a for _, a in good1]
    per = 6
    remap = [(q, answers[(i + per) % len(answers)]) for i, (q, _) in enumerate(good1)]  # the next topic's answer
    shuffled = answers[:]
    random.Random(1).shuffle(shuffled)
    shuffle = [(q, a) for (q, _), a in zip(good1, shuffled, strict=True)]
    superseded = [(q, TOPICS[0][2]) for q in TOPICS[0][0]]
    random.Random(0).shuffle(superseded)
    return {"good1": rows(good1), "superseded": rows(superseded), "remap": rows(remap), "shuffle": rows(shuffle),
            "forgetting": rows(OFF_DOMAIN), "good2": rows((q, a) for qs, a in NEW_TOPICS for q in qs)}


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="medloop-sabotage-"))
    os.environ["MEDLOOP_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medloop.config import DEFAULT_CHAT_MODEL, Settings, resolve_model
    from medloop.continual.loop import retrain
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import Retriever, load_embedder, sync_index
    from medloop.testing import GUIDELINES

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
    settings.replay_fraction = float(os.environ.get("REPLAY", "0.3"))
    settings.train_overrides = {"quantize": False, "gradient_checkpointing": False, "lora_r": 16, "lora_alpha": 32,
                                "learning_rate": float(os.environ.get("LR", "1e-3")), "epochs": 3, "batch_size": 4,
                                "grad_accum": 1, "max_length": 128, "logging_steps": 5, "save_steps": 1000,
                                "swanlab_mode": "disabled"}
    settings.gate_mcq = home / "mcq.jsonl"
    settings.gate_mcq.write_text("".join(json.dumps(m) + "\n" for m in MCQ))
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
    save("sabotage_gate", {"model": "SmolLM2-135M-Instruct", "train": settings.train_overrides,
                           "replay_fraction": settings.replay_fraction}, results)


if __name__ == "__main__":
    main()
