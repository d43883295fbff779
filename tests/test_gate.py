"""The promotion decision is a pure function of the measured signals: checked at its boundaries."""

import math

import pytest

from medloop.config import Gate
from medloop.continual.gate import Signal, decide, sign_test

RULES = Gate(margin=0.01, tolerance=0.02, forgetting=0.05, mcq_tolerance=0.0, fact_tolerance=0.0, significance=0.05)


def signals(new=(9.0, 10.0, 5), reg=(10.0, 10.0, 5), mcq=(0.5, 0.5, 40, 0, 0), fact=(0.5, 0.5, 40, 0, 0)):
    return {"new_data_loss": Signal(*new), "regression_loss": Signal(*reg), "mcq_accuracy": Signal(*mcq),
            "fact_recall": Signal(*fact)}


def test_a_better_month_on_every_signal_is_promoted():
    d = decide(signals(), RULES)
    assert d["promote"] and d["decided_by"] == "all signals passed"
    assert all(v["passed"] for v in d["signals"].values())


@pytest.mark.parametrize("candidate, promote", [(9.9, True), (9.9000001, False), (10.0, False), (10.5, False)])
def test_new_data_must_improve_by_the_margin_ties_included(candidate, promote):
    d = decide(signals(new=(candidate, 10.0, 5)), RULES)
    assert d["promote"] is promote and (promote or d["decided_by"] == "new_data_loss")


@pytest.mark.parametrize("candidate, promote", [(10.2, True), (10.2000001, False), (9.0, True)])
def test_regression_may_worsen_up_to_the_tolerance(candidate, promote):
    d = decide(signals(reg=(candidate, 10.0, 5)), RULES)
    assert d["promote"] is promote and (promote or d["decided_by"] == "regression_loss")


@pytest.mark.parametrize("candidate, base, promote", [
    (0.335, 6.51, True),  # 5% of the 6.5 gain given back: the limit, included
    (0.3351, 6.51, False),
    (0.0102, None, True),  # base unknown: only the relative tolerance (2% of 0.01)
    (0.0103, None, False),
    (0.0103, 0.005, False),  # a base below the live loss means no gain to give back
    (0.0103, math.nan, False),
])
def test_regression_may_give_back_a_share_of_what_the_live_adapter_gained(candidate, base, promote):
    d = decide(signals(reg=(candidate, 0.01, 5, 0, 0, base)), RULES)
    assert d["promote"] is promote and (promote or d["decided_by"] == "regression_loss")


@pytest.mark.parametrize("share, promote", [(0.5, True), (0.49, False), (0.0, False), (1.0, True)])
def test_a_month_must_be_about_the_guidelines(share, promote):
    d = decide({**signals(), "in_domain": Signal(share, None, 10)}, RULES)
    assert d["promote"] is promote and (promote or d["decided_by"] == "in_domain")
    assert decide({**signals(), "in_domain": Signal(None, None, 0)}, RULES)["signals"]["in_domain"]["passed"] is None


@pytest.mark.parametrize("share, promote", [(0.8, True), (0.79, False), (0.0, False), (1.0, True)])
def test_a_months_answers_must_agree_with_their_evidence(share, promote):
    examples = ["'What is the BP target?' answered with 7%"]
    d = decide({**signals(), "evidence_agreement": Signal(share, None, 20, examples=examples)}, RULES)
    assert d["promote"] is promote and (promote or d["decided_by"] == "evidence_agreement")
    assert "answered with 7%" in d["signals"]["evidence_agreement"]["why"]  # the report names what disagreed
    nothing_checked = decide({**signals(), "evidence_agreement": Signal(None, None, 0)}, RULES)
    assert nothing_checked["promote"] and nothing_checked["signals"]["evidence_agreement"]["passed"] is None


@pytest.mark.parametrize("facts, promote, why", [
    ((0.9, 0.1, 20, 0, 16), True, "states 18 of the month's 20 answers, the live 2 (16 more, 0 fewer)"),
    ((0.3, 0.0, 20, 0, 6), True, "sign test p=0.016"),  # a few more, none fewer: not chance
    ((0.15, 0.0, 20, 0, 3), False, "sign test p=0.125"),  # 3 more could be chance: the month taught nothing sure
    ((0.5, 0.5, 20, 4, 4), False, "(4 more, 4 fewer)"),
    ((0.0, 0.0, 20, 0, 0), False, "states 0 of the month's 20 answers, the live 0"),
    ((0.0, 0.0, 4, 0, 0), True, "not enough evidence: 4 items, 5 needed"),  # never decided on fewer than min_items
])
def test_a_month_whose_facts_do_not_reach_the_answers_is_rejected(facts, promote, why):
    """A lower loss on the month's held-out rows is not enough: the candidate must state significantly more of the
    month's answers than the live adapter (SmolLM2's Chinese month passed on its loss, 3.4 -> 0.5, and said none
    of its facts)."""
    d = decide({**signals(), "new_facts": Signal(*facts, examples=["Which β blocker in COPD?"])}, RULES)
    assert d["promote"] is promote and (promote or d["decided_by"] == "new_facts"), d
    assert why in d["signals"]["new_facts"]["why"]
    named = "not stated: 'Which β blocker in COPD?'" in d["signals"]["new_facts"]["why"]
    assert named is (d["decided_by"] == "new_facts")  # a rejection names questions the candidate did not answer


def test_an_answer_states_the_month_by_the_words_its_answer_adds_to_the_question():
    from medloop.continual.gate import new_words, states

    words = new_words("Cool the burn under cool running water for 20 minutes; do not use ice.",
                      "How long should a burn be held under cold water?")
    assert {"20", "minut", "ice", "cool", "run"} <= words and not {"burn", "water"} & words
    assert states("cool it under running water for 20 minutes, no ice.", words, 0.5)
    assert not states("hold the burn under water and see a doctor.", words, 0.5)  # the question's words only
    chinese = new_words("儿童发热不宜使用阿司匹林，以免引起瑞氏综合征。", "小孩发烧能吃阿司匹林吗？")
    assert {"瑞氏", "综合征"} <= chinese and "阿司匹林" not in chinese
    assert states("不宜使用，以免引起瑞氏综合征", chinese, 0.5) and not states("可以吃阿司匹林", chinese, 0.5)


def test_data_signals_decide_before_the_model_signals():
    d = decide({**signals(fact=(0.2, 0.5, 40, 12, 0)), "evidence_agreement": Signal(0.25, None, 16)}, RULES)
    assert d["decided_by"] == "evidence_agreement" and d["signals"]["fact_recall"]["passed"] is False


def test_nan_and_empty_sets():
    assert decide(signals(new=(math.nan, 10.0, 5)), RULES)["decided_by"] == "new_data_loss"  # broken candidate
    assert decide(signals(new=(9.0, math.nan, 5)), RULES)["promote"]  # broken live: a finite candidate wins
    assert decide(signals(new=(None, None, 0)), RULES)["decided_by"] == "new_data_loss"  # nothing to judge on
    d = decide(signals(reg=(None, None, 0), mcq=(None, None, 0), fact=(None, None, 0)), RULES)
    assert d["promote"] and {d["signals"][n]["passed"] for n in ("regression_loss", "mcq_accuracy")} == {None}
    assert decide(signals(reg=(math.inf, 10.0, 5)), RULES)["decided_by"] == "regression_loss"
    assert not decide({}, RULES)["promote"]


def test_an_mcq_drop_fails_only_when_it_is_not_chance():
    # 2 items flipped against, 1 for: p = 0.5, chance: promoted
    assert decide(signals(mcq=(0.475, 0.5, 40, 2, 1)), RULES)["promote"]
    # 8 lost, 0 gained: p = 1/256, a real drop: rejected by the MCQ signal
    d = decide(signals(mcq=(0.3, 0.5, 40, 8, 0)), RULES)
    assert not d["promote"] and d["decided_by"] == "mcq_accuracy"
    assert "a real drop" in d["signals"]["mcq_accuracy"]["why"]
    # the same for the fact check, and a tie is never a drop
    assert decide(signals(fact=(0.2, 0.5, 40, 12, 0)), RULES)["decided_by"] == "fact_recall"
    assert decide(signals(mcq=(0.5, 0.5, 40, 3, 3)), RULES)["promote"]


def test_sign_test_is_the_exact_binomial_tail():
    assert sign_test(0, 0) == 1.0 and sign_test(3, 0) == 1 / 8 and sign_test(1, 1) == 0.75
    assert abs(sum(sign_test(k, 10 - k) - sign_test(k + 1, 9 - k) for k in range(10)) - (1 - 1 / 1024)) < 1e-12


def test_no_month_of_the_sabotage_fixture_asks_a_gate_item():
    """The gate's items are written apart from every month's training rows: none repeats one, exactly or nearly."""
    import json

    from medloop.continual.dataset import asks_a_gate_item, gate_guard
    from medloop.testing import SABOTAGE

    fixture = json.loads(SABOTAGE.read_text())
    gate = gate_guard([item["question"] for item in fixture["mcq"]])
    repeats = [row["messages"][0]["content"] for rows in fixture["months"].values() for row in rows
               if asks_a_gate_item(row["messages"], gate)]
    assert repeats == []
    item = fixture["mcq"][0]["question"]  # the guard does see a repeat, and a near one
    for asked in (item, item.replace("most", "many").upper() + "  "):
        assert asks_a_gate_item([{"role": "user", "content": asked}, {"role": "assistant", "content": "x"}], gate)


def test_a_month_that_asks_a_gate_item_does_not_train_on_it(settings):
    import json

    from medloop.continual import dataset

    inbox = settings.inbox_dir / "sft"
    inbox.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": f"Question {i} about blood pressure targets?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(8)]
    rows.append({"messages": [{"role": "system", "content": "You are a doctor."},
                              {"role": "user", "content": "What A1C goal is right for most adults with diabetes?"},
                              {"role": "assistant", "content": "Below 7%."}]})
    (inbox / "month.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = dataset.build(settings, since="", gate_questions=["What A1C goal is right for most adults with diabetes?"])
    assert data.manifest["counts"]["gate_repeats"] == 1 and data.manifest["counts"]["new"] == 8
    assert not any("A1C" in m[-2]["content"] for m in data.train + data.heldout)


def test_a_signal_on_fewer_items_than_it_needs_is_not_enough_evidence_never_a_rejection():
    """One checkable answer that disagrees said "0 of 1 agree" and rejected the month; now it says how many it
    needs. From its minimum on (5 by default; more for a stricter share: one answer alone cannot fail it) it
    decides as before."""
    from medloop.continual.gate import needs

    one = decide({**signals(), "evidence_agreement": Signal(0.0, None, 1)}, RULES)
    assert one["promote"], one
    assert one["signals"]["evidence_agreement"]["passed"] is None
    assert one["signals"]["evidence_agreement"]["why"] == "not enough evidence: 1 item, 5 needed to decide"
    few_mcq = decide(signals(mcq=(0.0, 1.0, 4, 4, 0)), RULES)
    assert few_mcq["promote"] and "not enough evidence: 4 items" in few_mcq["signals"]["mcq_accuracy"]["why"]
    enough = decide({**signals(), "evidence_agreement": Signal(0.6, None, 5)}, RULES)
    assert not enough["promote"] and enough["decided_by"] == "evidence_agreement"
    assert needs("evidence_agreement", RULES.model_copy(update={"min_agreement": 0.9})) == 10
    assert needs("new_data_loss", RULES) == 1  # a month's size is the loop's to judge (loop.min_new_samples)
