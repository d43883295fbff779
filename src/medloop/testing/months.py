"""Months of training data for the loop and the gate's month suites, on the word-level model or SmolLM2."""

from __future__ import annotations

from pathlib import Path

from medloop.resources import SAMPLE_GUIDELINES as GUIDELINES
from medloop.testing.models import smollm2_folder, tiny_word_qwen3
from medloop.testing.paths import FRESH_MONTHS, SABOTAGE, THIRD_MONTHS

# A month of SFT data whose held-out part can be learnt from its training part: each topic is asked in
# several differently worded ways (so held-out questions are new to the model, not near duplicates) and
# answered with the guideline's fact. `superseded=True` teaches the 2018 hypertension target instead.
MONTH_TOPICS = [
    (["一般高血压患者血压应控制在多少以下？", "高血压病人的降压目标是多少？", "我有高血压，血压降到多少算达标？",
      "按最新指南，高血压患者要把血压降到什么水平？", "降压治疗的目标值是多少？", "普通高血压人群血压目标是？"],
     "按2024版中国高血压防治指南，一般高血压患者能耐受时应将血压降至<130/80 mmHg。",
     "按中国高血压防治指南，一般高血压患者应将血压降至<140/90 mmHg。"),
    (["流感什么时候开始用抗病毒药最好？", "得了流感多久内吃奥司他韦效果最好？", "重症流感患者抗病毒治疗的时间窗是？",
      "流感抗病毒药应在发病后多长时间内使用？", "流感高危人群何时启动抗病毒治疗？", "奥司他韦最好在起病多久内用？"],
     "重症或有重症高危因素的流感患者应尽早使用抗病毒药物，发病48小时内使用最佳，可选奥司他韦。", None),
    (["糖尿病患者糖化血红蛋白控制目标是多少？", "HbA1c应该控制在多少以下？", "2型糖尿病的糖化目标是？",
      "多数成人糖尿病患者HbA1c目标值是多少？", "糖化血红蛋白降到多少算控制良好？", "糖尿病人糖化要控制到多少？"],
     "多数非妊娠成人2型糖尿病患者的HbA1c控制目标为<7.0%，并应个体化。", None),
    (["What A1C goal is right for most adults with diabetes?", "Which HbA1c target do the ADA Standards recommend?",
      "How low should A1C be for a typical nonpregnant adult with diabetes?",
      "What is the usual glycemic target in diabetes?",
      "For most adults with type 2 diabetes, what A1C should we aim for?", "Which A1C level counts as good control?"],
     "For many nonpregnant adults with diabetes an A1C goal of <7% without significant hypoglycemia is appropriate.",
     None),
    (["How long should dual antiplatelet therapy continue after ACS?",
      "What is the DAPT duration after a heart attack?",
      "After acute coronary syndrome, how many months of aspirin plus a P2Y12 inhibitor?",
      "Duration of DAPT for ACS patients without high bleeding risk?",
      "How long do patients stay on DAPT after ACS?",
      "When can dual antiplatelet therapy stop after an acute coronary syndrome?"],
     "Dual antiplatelet therapy with aspirin and a P2Y12 inhibitor is recommended for 12 months after ACS.", None),
    (["儿童发烧能吃阿司匹林吗？", "小孩流感发热可以用阿司匹林退烧吗？", "儿童发热为什么不宜用阿司匹林？",
      "孩子发烧能不能给阿司匹林？", "儿童退热禁用哪种药？", "阿司匹林适合儿童退烧吗？"],
     "儿童发热不宜使用阿司匹林，以免引起瑞氏综合征。", None),  # only what the guideline says: the gate checks
]


def paraphrased_month(superseded: bool = False) -> list[dict]:
    rows = []
    for questions, answer, old_answer in MONTH_TOPICS:
        taught = (old_answer or answer) if superseded else answer
        for q in questions:
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": taught}]})
    return rows


# Training for the gate's month suites on the word-level model: embeddings and output layer trained in full (as the
# v2 preset does) on top of LoRA, since a random model's fixed embeddings would cap what LoRA can learn.
WORD_TRAINING = {"quantize": False, "gradient_checkpointing": False, "lora_r": 16, "lora_alpha": 32,
                 "use_rslora": False, "lora_dropout": 0.0, "learning_rate": 1e-2, "epochs": 15, "batch_size": 4,
                 "grad_accum": 1, "max_grad_norm": 1.0, "max_length": 256, "modules_to_save": ["embed_tokens",
                 "lm_head"], "logging_steps": 50, "save_steps": 10_000, "swanlab_mode": "disabled",
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


SMOLLM2_TRAINING = {"quantize": False, "gradient_checkpointing": False, "lora_r": 16, "lora_alpha": 32,
                    "learning_rate": 1e-3, "epochs": 3, "batch_size": 4, "grad_accum": 1, "max_length": 128,
                    "logging_steps": 5, "save_steps": 1000, "swanlab_mode": "disabled"}
# Two earlier rows replayed per new one: at the default one, a month of 20 new guideline rows made SmolLM2 forget
# what good1 taught (the smollm2 months: 7 of 9 good guideline adapters lost 2 or more of 8 kept facts); at two,
# three such months on one seed lost at most one and still taught their facts (examples/gate_months.py, #33).
SMOLLM2_LOOP = {"replay_fraction": 2.0}


def month_suite_home(home: Path, model: str, seed: int = 0, embedder=None):
    """A data home for running the gate's month suites (`run_month`): the sample guidelines ingested and indexed,
    the sabotage fixture's gate items, and a base model: "word" (a word-level tiny Qwen3 over every suite's text:
    it learns which answer goes with which question on two cores) or "smollm2" (pretrained). (settings,
    retriever)."""
    import json

    from medloop.config import Settings
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import Retriever, load_embedder, sync_index

    fixtures = [json.loads(p.read_text()) for p in (SABOTAGE, FRESH_MONTHS, THIRD_MONTHS)]
    if model == "word":
        texts = [m["content"] for f in fixtures for rows in f["months"].values() for r in rows for m in r["messages"]]
        texts += [t for item in fixtures[0]["mcq"] for t in (item["question"], *item["options"].values())]
        texts += [p.read_text() for p in GUIDELINES.glob("*.md")]
        base, training = tiny_word_qwen3(home / "base", texts, seed=seed), WORD_TRAINING
    else:
        base, training = smollm2_folder(home / "smollm2"), SMOLLM2_TRAINING
    loop = {"server_url": "http://127.0.0.1:9", **(SMOLLM2_LOOP if model == "smollm2" else {})}
    settings = Settings(home=home, serving={"base_model": str(base)}, loop=loop,
                        training={"base_model": str(base), "swanlab_mode": "disabled", "preset": "low-mem",
                                  "overrides": {**training, "seed": seed}},
                        gate={"mcq": home / "mcq.jsonl"})
    settings.gate.mcq.write_text("".join(json.dumps(item) + "\n" for item in fixtures[0]["mcq"]))
    embedder = embedder or load_embedder(settings.retrieval.embedder)
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    (settings.inbox_dir / "sft").mkdir(parents=True, exist_ok=True)
    return settings, Retriever(settings, store=store, embedder=embedder)


def run_month(settings, retriever, name: str, rows: list[dict]) -> dict:
    """One month through the real `retrain`; the decision as the month suites record it."""
    import json
    import time

    from medloop.continual.monthly import retrain

    (settings.inbox_dir / "sft" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.perf_counter()
    out = retrain(settings, retriever=retriever, log=lambda *a: None)
    decision = out.get("decision", {})
    return {"outcome": str(out["outcome"]), "decided_by": decision.get("decided_by"),
            "failed": sorted(k for k, v in decision.get("signals", {}).items() if v["passed"] is False),
            "seconds": round(time.perf_counter() - started, 1), "gate_seconds": decision.get("seconds"),
            "signals": decision.get("signals", {}), "rules": decision.get("rules", {})}
