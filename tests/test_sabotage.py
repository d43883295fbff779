"""The promotion gate against sabotaged months, end to end through the real `retrain` (data -> LoRA from the live
adapter -> gate -> promote or reject), on a model that learns which answer goes with which question: a small
random Qwen3 on a word-level vocabulary (`medloop.testing.tiny_word_qwen3`; the 151k-token one learns only
token frequencies on two cores). Each month is asserted with the signal that decided it and the ones that
failed; `examples/gate_months.py` runs the same months on a pretrained model, and the fresh months written after
the rules were frozen (reported there, not asserted here: CI asserts on this dev suite only)."""

import json

import pytest

from medloop.config import Settings
from medloop.testing import SABOTAGE, month_suite_home, run_month

pytestmark = pytest.mark.slow  # each month trains an adapter

ORDER = ["good1", "superseded", "remap", "shuffle", "forgetting", "good2"]


class Months:
    """The suite's months, run in order, each when a test first asks for it: each test pays for its own month, so
    on a slow machine pytest's timeout fails the test whose month ran long, with its name, not every test at once.
    A month that did not finish fails the tests that need it or a later one with that reason."""

    def __init__(self, settings, retriever):
        self.settings, self.retriever = settings, retriever
        self.fixture = json.loads(SABOTAGE.read_text())["months"]
        self.done: dict[str, dict] = {}
        self.broken = ""

    def __getitem__(self, name: str) -> dict:
        while name not in self.done:
            if self.broken:
                pytest.fail(self.broken)
            month = ORDER[len(self.done)]
            try:
                self.done[month] = run_month(self.settings, self.retriever, month, self.fixture[month])
            except BaseException as e:  # pytest-timeout's failure too: later months build on this one
                self.broken = f"month {month!r} did not finish: {type(e).__name__}: {str(e)[:200]}"
                raise
        return self.done[name]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, embedder):
    settings, retriever = month_suite_home(tmp_path_factory.mktemp("sabotage"), "word", seed=0, embedder=embedder)
    return Months(settings, retriever)


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
    assert set(month["failed"]) >= {"evidence_agreement", "fact_recall"}
    # Its loss on what the live adapter knew rises: on the multilingual default by 4x (0.054 -> 0.216, seed 0) on the
    # machine of 2026-12-05, by 1.6x (0.327 -> 0.538) on that of 2026-12-06 with the same code and locks (the tiny
    # stand-in's trajectory differs between CPUs); with the English embedder it rose 60x (0.047 -> 2.87). By how much
    # is the machine's; that it rises is the month's.
    reg = month["signals"]["regression_loss"]
    assert reg["candidate"] > reg["live"], reg


def test_an_off_domain_month_is_rejected(outcomes):
    """Its questions are not medical (at most a stray one names a medical word). Its regression loss rises, as a good
    month's does (several times over on one machine, 1.8x on another: the stand-in's trajectory differs between
    CPUs): on the regression loss alone the two cannot be told apart. (Its held-out new-data loss may fail too and,
    being first in the gate's order, be named as the decider; `in_domain` must fail either way.)"""
    month = outcomes["forgetting"]
    assert month["outcome"] == "rejected" and "in_domain" in month["failed"], month
    assert month["signals"]["in_domain"]["candidate"] < Settings().gate.min_in_domain
    reg = month["signals"]["regression_loss"]
    assert reg["candidate"] > reg["live"]


# On the locked stack (requirements/medloop.txt) the word-level stand-in's second good month forgets 7 of the 22 facts
# the first taught and gains 2 (sign test p=0.090): fact_recall rejects it, rightly for what that adapter does,
# wrongly for the month's label. It passed on the stack of 2026-12-01 (4 lost, 2 gained); pinning transformers
# 5.24.0, sentence-transformers 6.2.0, accelerate 1.15.0 or datasets 5.1.0 one at a time did not bring that back.
# Deciding a month by what its adapter does, with sample sizes and undecided outcomes, is issue #33; strict: this
# test fails the suite the day the month is promoted again, so that the marker goes.
@pytest.mark.xfail(strict=True, reason="the stand-in's second month forgets 7 facts on the locked stack (#33)")
def test_a_second_good_month_is_promoted_and_keeps_what_the_first_taught(outcomes):
    month = outcomes["good2"]
    assert month["outcome"] == "promoted", month
    fact = month["signals"]["fact_recall"]
    assert fact["passed"], fact  # what it lost, against what it gained, is a drop the sign test calls chance
    assert month["signals"]["evidence_agreement"]["candidate"] == 1.0


def test_a_good_month_gives_back_little_of_the_regression_gain_though_its_loss_rises(outcomes):
    """Learning new facts raises the loss on a nearly learned regression set far beyond a relative tolerance
    (about 2x in the runs seen), which alone would reject every month after the first; measured against what the
    live adapter gained over the base, it passes, and the fact check is what judges it."""
    reg = outcomes["good2"]["signals"]["regression_loss"]
    rules = outcomes["good2"]["rules"]
    assert reg["passed"] and reg["candidate"] > reg["live"] * (1 + 10 * rules["tolerance"])
    assert reg["candidate"] <= reg["live"] + rules["forgetting"] * (reg["base"] - reg["live"])
