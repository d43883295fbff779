"""The promotion gate against sabotaged months, end to end through the real `retrain` (data -> LoRA from the live
adapter -> gate -> promote or reject), on a model that learns which answer goes with which question: a small
random Qwen3 on a word-level vocabulary (`medloop.testing.tiny_word_qwen3`; the 151k-token one learns only
token frequencies on two cores). Each month is asserted with the signal that decided it and the ones that
failed; `examples/sabotage_gate.py` runs the same months on a pretrained model."""

import json

import pytest

from medloop.testing import GUIDELINES, SABOTAGE, tiny_word_qwen3

ORDER = ["good1", "superseded", "remap", "shuffle", "forgetting", "good2"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, embedder):
    from medloop.config import Settings
    from medloop.continual.loop import retrain
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import Retriever, sync_index

    home = tmp_path_factory.mktemp("sabotage")
    fixture = json.loads(SABOTAGE.read_text())
    texts = [m["content"] for rows in fixture["months"].values() for r in rows for m in r["messages"]]
    texts += [t for item in fixture["mcq"] for t in (item["question"], *item["options"].values())]
    texts += [p.read_text() for p in GUIDELINES.glob("*.md")]
    base = tiny_word_qwen3(home / "base", texts)
    settings = Settings(home=home, base_model=str(base), train_base_model=str(base),
                        server_url="http://127.0.0.1:9", swanlab_mode="disabled", replay_fraction=1.0,
                        train_preset="low-mem", gate_mcq=home / "mcq.jsonl")
    # Embeddings and output layer trained in full (as the v2 preset does) on top of LoRA: a random model's
    # fixed embeddings would otherwise cap what LoRA can learn.
    settings.train_overrides = {"quantize": False, "gradient_checkpointing": False, "lora_r": 16, "lora_alpha": 32,
                                "use_rslora": False, "lora_dropout": 0.0, "learning_rate": 1e-2, "epochs": 15,
                                "batch_size": 4, "grad_accum": 1, "max_grad_norm": 1.0, "max_length": 256,
                                "modules_to_save": ["embed_tokens", "lm_head"], "logging_steps": 50,
                                "save_steps": 10_000, "swanlab_mode": "disabled",
                                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]}
    settings.gate_mcq.write_text("".join(json.dumps(item) + "\n" for item in fixture["mcq"]))
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    retriever = Retriever(settings, store=store, embedder=embedder)
    inbox = settings.inbox_dir / "sft"
    inbox.mkdir(parents=True)
    found = {}
    for name in ORDER:
        (inbox / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fixture["months"][name]))
        out = retrain(settings, retriever=retriever, log=lambda *a: None)
        decision = out["decision"]
        found[name] = {"outcome": str(out["outcome"]), "decided_by": decision["decided_by"],
                       "failed": {k for k, v in decision["signals"].items() if v["passed"] is False},
                       "signals": decision["signals"], "rules": decision["rules"]}
    return found


def test_a_month_that_teaches_the_guidelines_is_promoted(outcomes):
    """It learned the facts it is checked on, asked in words none of its rows uses."""
    month = outcomes["good1"]
    assert month["outcome"] == "promoted", month
    fact = month["signals"]["fact_recall"]
    assert fact["candidate"] - fact["live"] >= 0.5 and fact["worse"] <= 1, fact


@pytest.mark.parametrize("name", ["remap", "shuffle"])
def test_a_month_whose_answers_disagree_with_their_evidence_is_rejected(outcomes, name):
    """Answers moved to other questions state values that the questions' evidence does not: the data check
    decides. The model learned the noise too: it answers fewer of the facts the live adapter knew (too few, on
    the remapped month, for the sign test alone to call it a drop)."""
    month = outcomes[name]
    assert month["outcome"] == "rejected" and month["decided_by"] == "evidence_agreement", month
    assert month["signals"]["evidence_agreement"]["candidate"] <= 0.25
    fact = month["signals"]["fact_recall"]
    assert fact["worse"] > fact["better"]


def test_superseded_target_is_caught_by_the_data_and_on_what_it_knew(outcomes):
    """Its answers give <140/90 as the general target; the 2024 guideline gives 140/90 only for patients over 80.
    The data check, reading each value with whom it is for, decides; the model signals say the same."""
    month = outcomes["superseded"]
    assert month["outcome"] == "rejected" and month["decided_by"] == "evidence_agreement", month
    assert month["failed"] >= {"evidence_agreement", "regression_loss", "fact_recall"}


def test_an_off_domain_month_is_rejected(outcomes):
    """None of its questions finds guideline evidence. Its regression loss rises several times over, as a good
    month's does: on loss alone the two cannot be told apart."""
    month = outcomes["forgetting"]
    assert month["outcome"] == "rejected" and month["decided_by"] == "in_domain", month
    assert month["signals"]["in_domain"]["candidate"] == 0
    reg = month["signals"]["regression_loss"]
    assert reg["candidate"] > 2 * reg["live"]


def test_a_second_good_month_is_promoted_and_keeps_what_the_first_taught(outcomes):
    month = outcomes["good2"]
    assert month["outcome"] == "promoted", month
    fact = month["signals"]["fact_recall"]
    assert fact["passed"] and fact["worse"] - fact["better"] <= 3, fact  # no drop the sign test calls real
    assert month["signals"]["evidence_agreement"]["candidate"] == 1.0


def test_a_good_month_gives_back_little_of_the_regression_gain_though_its_loss_rises(outcomes):
    """Learning new facts raises the loss on a nearly learned regression set far beyond a relative tolerance
    (about 2x in the runs seen), which alone would reject every month after the first; measured against what the
    live adapter gained over the base, it passes, and the fact check is what judges it."""
    reg = outcomes["good2"]["signals"]["regression_loss"]
    rules = outcomes["good2"]["rules"]
    assert reg["passed"] and reg["candidate"] > reg["live"] * (1 + 10 * rules["tolerance"])
    assert reg["candidate"] <= reg["live"] + rules["forgetting"] * (reg["base"] - reg["live"])
