"""The promotion gate: several signals, each reported, and one pure decision.

Signals (candidate vs the live adapter, or the base model the first time):
- `new_data_loss`: eval loss on this month's held-out new samples must improve by `margin` (relative);
- `new_facts`: asked each of the month's new questions (training and held-out, without evidence: what the adapter
  itself knows), the candidate must state the month's answer in significantly more of them than the live adapter
  (a one-sided sign test on the questions the two answer differently, p < `significance`). An answer is stated
  when the greedy answer has at least `stated_share` of the words the month's answer adds to its question. The
  loss alone is not enough: on SmolLM2 a Chinese month's held-out loss fell from 3.4 to 0.5 while its adapter
  answered none of its facts (it reads no Chinese) and lost two of eight facts it knew; a month that teaches
  nothing the model can say brings only the risk of what it takes away. Measured on the training rows too, since
  the held-out share of a month is a handful of rows, and what it asks is whether the facts reached the answers
  at all (other wordings of them are the benches' probes, examples/gate_months.py);
- `regression_loss`: eval loss on the regression set (earlier months' held-out data) may rise by the larger of
  `tolerance` of the live loss and `forgetting` of what the live adapter gained over the base model
  there. A relative tolerance alone fails every month after the first: a regression set the live adapter has
  nearly learned (loss 0.05) triples its loss under any further training, even a good month's; measured
  against the gain (6.4 nats on the sabotage suite's model), 0.05 -> 0.15 gives back 2%, and a month that
  teaches the superseded target (0.05 -> 1.66) 25%;
- `in_domain`: the share of this month's new questions that are medical (they find guideline evidence, or name a
  lexicon concept or a word of the general medical vocabulary `data/medical_words.txt`) must reach
  `min_in_domain`: a month of off-domain text teaches the medical assistant nothing it serves, and what
  it takes away can hide below every loss tolerance (on the sabotage suite's model an off-domain month raised
  the regression loss as much as a good month did). Until this round it counted only questions with guideline
  evidence, and the fresh month of correct general medicine (tests/fixtures/fresh_months) was rejected for
  being outside the index;
- `evidence_agreement`: of the month's answers that state a value (a target, threshold, duration) or name a drug,
  class or procedure, and whose question finds evidence, the share whose every value and name a clause of that
  evidence states for the same thing (a general target is not supported by the elderly's, a diagnostic threshold
  not by a target; read across languages, `retrieval.claims`), and no superseded version alone, must reach
  `min_agreement`; a month with no such answer is "not measured". Answers shuffled across questions, a
  topic answered with another's facts or the wrong drug disagree with their evidence; the model-side signals see
  such label noise only as far as the model learns it, and on a small model a month of new facts loses about as
  many old ones as a shuffled month does;
- `mcq_accuracy`: accuracy with evidence on the guideline MCQ set must not drop (by more than
  `mcq_tolerance`) significantly: a drop counts when an exact one-sided sign test on the items the two
  got differently (McNemar) gives p < `significance`, so two items flipping by chance on a 46-item set
  do not reject a month, and a month that teaches a superseded recommendation does;
- `fact_recall`: the same questions asked as a user asks them (with the evidence serving adds, no lettered
  options), the share of greedy answers that contain the guideline's key fact must not drop, judged the same
  way. (With the options in the prompt, a prompt no user sends, a month of new facts moved 5 of 24 answers on
  the sabotage suite's model; asked plainly, none.)
`in_domain` and `evidence_agreement` read the month's data against the guideline index (`data_signals`); the
others measure the adapters. Measuring loads the base model once, the way the adapters were trained on it
(4-bit where they were trained 4-bit), with both adapters on it, and runs batched on the training device.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medloop.config import Gate
from medloop.knowledge.language import CJK
from medloop.resources import DATA
from medloop.retrieval.tokenize import tokenize

MEDICAL_WORDS = DATA / "medical_words.txt"
# The longest answer `new_facts` asks for, in tokens: as long as the month's longest answer, up to this, so that one
# essay-length row does not make every question of the month decode that long.
MAX_ANSWER_TOKENS = 128


@dataclass
class Signal:
    candidate: float | None
    live: float | None
    n: int  # how many samples or items it was measured on
    worse: int = 0  # items the live adapter got right and the candidate wrong (accuracy-type signals)
    better: int = 0  # items the candidate got right and the live adapter wrong
    base: float | None = None  # the base model's value, without any adapter (regression loss)
    examples: list[str] = field(default_factory=list)  # what failed, for the run report (a few, as found)


def sign_test(worse: int, better: int) -> float:
    """One-sided exact p-value of at least `worse` losses among the worse+better items that changed, if
    losing and winning were equally likely (McNemar's exact test)."""
    from scipy.stats import binomtest

    n = worse + better
    return float(binomtest(worse, n, 0.5, alternative="greater").pvalue) if n else 1.0


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# One judge per signal, (signal, rules) -> (passed, why); each is called with a measured, finite candidate.
def _new_data_loss(s: Signal, rules: Gate) -> tuple[bool, str]:
    need = s.live * (1 - rules.margin)
    return s.candidate <= need, f"{s.candidate:.4f} vs {s.live:.4f} (must be <= {need:.4f}, margin {rules.margin})"


def _new_facts(s: Signal, rules: Gate) -> tuple[bool, str]:
    p = sign_test(s.better, s.worse)  # the chance of at least this many more stated answers, were it a coin
    stated, live = round(s.candidate * s.n), round(s.live * s.n)
    return p < rules.significance, (f"the candidate states {stated} of the month's {s.n} answers, the live "
                                    f"{live} ({s.better} more, {s.worse} fewer): sign test p={p:.3f} (must be "
                                    f"below {rules.significance}: the month's facts reached the model's answers)"
                                    + (f"; not stated: {'; '.join(repr(q) for q in s.examples[:3])}"
                                       if s.examples and p >= rules.significance else ""))


def _in_domain(s: Signal, rules: Gate) -> tuple[bool, str]:
    found, shown = round(s.candidate * s.n), "; ".join(f"'{q}'" for q in s.examples[:3])
    return s.candidate >= rules.min_in_domain, (f"{found} of {s.n} new questions are medical: they find guideline "
                                                 f"evidence or name a medical concept (at least "
                                                 f"{rules.min_in_domain:.0%})" + (f"; not: {shown}" if shown else ""))


@functools.lru_cache(maxsize=1)
def _medical_words() -> tuple[re.Pattern, tuple[str, ...]]:
    """data/medical_words.txt: English words (whole words, plural -s too) and Chinese ones (as written)."""
    lines = [w.strip().lower() for w in MEDICAL_WORDS.read_text("utf-8").splitlines()
             if w.strip() and not w.startswith("#")]
    chinese = tuple(w for w in lines if CJK.search(w))
    english = sorted((w for w in lines if not CJK.search(w)), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(map(re.escape, english)) + r")s?\b"), chinese


def names_medicine(question: str, lexicon) -> bool:
    """Is the question about medicine? It names a lexicon concept or a word of the general medical vocabulary. A
    month of general medicine outside the guideline index is medical; a month of trivia is not."""
    if lexicon.find(question)[0]:
        return True
    english, chinese = _medical_words()
    text = question.lower()
    return bool(english.search(text)) or any(w in text for w in chinese)


def _evidence_agreement(s: Signal, rules: Gate) -> tuple[bool, str]:
    agreeing, shown = round(s.candidate * s.n), "; ".join(s.examples[:3])
    return s.candidate >= rules.min_agreement, (f"{agreeing} of the {s.n} answers it could check state only values "
                                                 f"and names that their evidence states, clause for clause (at "
                                                 f"least {rules.min_agreement:.0%})" + (f"; e.g. {shown}" if shown
                                                                                        else ""))


def _regression_loss(s: Signal, rules: Gate) -> tuple[bool, str]:
    gain = s.base - s.live if _finite(s.base) and s.base > s.live else 0.0
    limit = s.live + max(rules.tolerance * s.live, rules.forgetting * gain)
    base = f", base {s.base:.4f}" if _finite(s.base) else ""
    return s.candidate <= limit, f"{s.candidate:.4f} vs {s.live:.4f}{base} (at most {limit:.4f})"


def _accuracy(tolerance: float, s: Signal, rules: Gate) -> tuple[bool, str]:
    floor = s.live - tolerance
    if s.candidate >= floor - 1e-12:
        return True, f"{s.candidate:.3f} vs {s.live:.3f} (floor {floor:.3f})"
    p = sign_test(s.worse, s.better)
    return p >= rules.significance, (f"{s.candidate:.3f} vs {s.live:.3f}: {s.worse} items lost, {s.better} gained, "
                                     f"sign test p={p:.3f} ({'chance' if p >= rules.significance else 'a real drop'} "
                                     f"at {rules.significance})")


JUDGES = {
    "new_data_loss": _new_data_loss,
    "in_domain": _in_domain,
    "evidence_agreement": _evidence_agreement,
    "new_facts": _new_facts,
    "regression_loss": _regression_loss,
    "mcq_accuracy": lambda s, rules: _accuracy(rules.mcq_tolerance, s, rules),
    "fact_recall": lambda s, rules: _accuracy(rules.fact_tolerance, s, rules),
}
ORDER = tuple(JUDGES)  # the order signals are reported in; the first that fails decides
# judged against the live adapter
RELATIVE = {"new_data_loss", "new_facts", "regression_loss", "mcq_accuracy", "fact_recall"}


SHARES = {"in_domain": "min_in_domain", "evidence_agreement": "min_agreement"}  # signal -> its threshold


def needs(name: str, rules: Gate) -> int:
    """The fewest items a supporting signal decides on: `min_items`, and for a share, enough that one item alone
    cannot fail it (at threshold t, one miss among n leaves (n-1)/n, at least t once n >= 1/(1-t))."""
    if name == "new_data_loss":
        return 1
    threshold = getattr(rules, SHARES[name]) if name in SHARES else 0.0
    return max(rules.min_items, math.ceil(1 / (1 - threshold) - 1e-9) if threshold < 1 else rules.min_items)


def judge(name: str, s: Signal, rules: Gate) -> tuple[bool | None, str]:
    """(passed, why) for one signal; passed is None when the signal could not be measured, or on too few items
    to decide (`needs`), and does not count."""
    if s.n == 0:
        if name == "new_data_loss":
            return False, "no held-out new data: nothing to judge the candidate on"
        if name == "evidence_agreement":
            return None, "not measured: no answer states a value or a name that its question's evidence could check"
        return None, "not measured: no data"
    if s.n < (need := needs(name, rules)):
        return None, f"not enough evidence: {s.n} item{'s' if s.n > 1 else ''}, {need} needed to decide"
    if not _finite(s.candidate):
        return False, f"candidate value is {s.candidate}"
    if name in RELATIVE and not _finite(s.live):
        return True, f"live value is {s.live}: any finite candidate is better"
    return JUDGES[name](s, rules)


def decide(signals: dict[str, Signal], rules: Gate) -> dict:
    """Promote only if every measured signal passes and the new-data signal was measured. Pure: same signals,
    same rules, same decision; `decided_by` names the first signal that said no."""
    verdicts = {}
    for name in ORDER:
        if name in signals:
            passed, why = judge(name, signals[name], rules)
            verdicts[name] = {**asdict(signals[name]), "passed": passed, "why": why}
    if "new_data_loss" not in verdicts:
        verdicts["new_data_loss"] = {"candidate": None, "live": None, "n": 0, "passed": False,
                                     "why": "not measured"}
    failed = [name for name in ORDER if name in verdicts and verdicts[name]["passed"] is False]
    return {"promote": not failed, "decided_by": failed[0] if failed else "all signals passed",
            "signals": verdicts, "rules": rules.model_dump(mode="json")}


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_tokens: int, batch_size: int = 16) -> list[str]:
    """The greedy answer to each prompt, case-folded, answered in length-sorted, left-padded batches: a batch
    decodes in max_tokens steps."""
    import torch

    from medloop.models import left_pad

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = left_pad([prompts[i] for i in batch], pad, device)
        width = ids.shape[1]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=pad)
        for row, i in enumerate(batch):
            answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).casefold()
    return [answers[i] for i in range(len(prompts))]


def fact_hits(model, tokenizer, items, prompts: list[list[int]], max_tokens: int, batch_size: int = 16) -> list[bool]:
    """Per item: does the greedy answer to its question (with evidence) contain its key fact or the right
    option's text?"""
    answers = greedy_answers(model, tokenizer, prompts, max_tokens, batch_size)
    return [any(w.casefold() in answer for w in (item.fact, item.options[item.answer]) if w)
            for item, answer in zip(items, answers, strict=True)]


def new_words(answer: str, question: str) -> set[str]:
    """What a month's answer teaches: its words (retrieval tokens) that its question does not already have."""
    return set(tokenize(answer)) - set(tokenize(question))


def states(answer: str, words: set[str], share: float) -> bool:
    """Does an answer say at least `share` of `words`?"""
    return len(words & set(tokenize(answer))) >= share * len(words)


def data_signals(rows: list[list[dict]], retriever, k: int) -> dict[str, Signal]:
    """`in_domain` and `evidence_agreement` of the month's new rows (training and held-out): properties of the
    data, with no live value to compare with."""
    from medloop.retrieval.grounding import latest_question
    from medloop.retrieval.staleness import disagreements

    if retriever is None or not rows:
        return {}
    medical, agreeing, disagreeing, outside = 0, 0, [], []
    for row in rows:
        question = latest_question(row[:-1])
        hits = [h for h in retriever.search(question, k) if h.relevant]
        if hits or names_medicine(question, retriever.lexicon):
            medical += 1
        else:
            outside.append(question[:60])
        if not hits:
            continue  # nothing to check it against: outside the guideline index, not against it
        claims, unsupported = disagreements(row[-1]["content"], hits, retriever.store, retriever.lexicon)
        if not claims:
            continue  # nothing to check: an answer without a value or a name cannot disagree on one
        if unsupported:
            disagreeing.append(f"'{question[:60]}' answered with {', '.join(unsupported)}")
        else:
            agreeing += 1
    checked = agreeing + len(disagreeing)
    return {"in_domain": Signal(medical / len(rows), None, len(rows), examples=outside[:5]),
            "evidence_agreement": Signal(agreeing / checked if checked else None, None, checked,
                                         examples=disagreeing[:5])}


def measure(base_model: str, candidate: Path, live: Path | None, *, heldout: list, regression: list,
            quantize: bool, new: list | None = None, stated_share: float = Gate().stated_share,
            mcq_items: list | None = None, retriever=None, k: int = 3,
            fact_tokens: int = 32) -> tuple[dict[str, Signal], dict]:
    """Every signal for the candidate and the live adapter (or the base model), on one loaded base. `new`: the
    month's new rows (training and held-out), for `new_facts` (None: not measured, not reported)."""
    from peft import PeftModel

    from medloop.continual.mcq import chat_prompt, item_prompt, score_items
    from medloop.models import load
    from medloop.retrieval.grounding import latest_question
    from medloop.training.evaluate import eval_loss

    started = time.perf_counter()
    base, tokenizer = load(base_model, quantize=quantize)
    model = PeftModel.from_pretrained(base, candidate, adapter_name="candidate").eval()
    if live is not None:
        model.load_adapter(live, adapter_name="live")

    def on(which: str):
        if which == "live" and live is None:
            return model.disable_adapter()
        model.set_adapter(which)
        return contextlib.nullcontext()

    # Retrieval and rendering of the prompts do not depend on the adapter: once for both. The fact check asks
    # each question as a user would, with the evidence serving adds, and no options to copy from.
    prompts = [item_prompt(tokenizer, item, retriever, k) for item in mcq_items or []] if retriever else []
    questions = [item_prompt(tokenizer, item, retriever, k, options=False) for item in mcq_items or []] \
        if retriever else []
    taught = [(chat_prompt(tokenizer, row[:-1]), words, latest_question(row[:-1])) for row in new or []
              if (words := new_words(row[-1]["content"], latest_question(row[:-1])))]
    answer_tokens = min(MAX_ANSWER_TOKENS, max((len(tokenizer(row[-1]["content"], add_special_tokens=False)
                                                    ["input_ids"]) for row in new or []), default=1))
    losses: dict[str, dict[str, float | None]] = {"new_data_loss": {}, "regression_loss": {}}
    if regression and live is not None:  # the first time, "live" is the base model already
        with model.disable_adapter():
            losses["regression_loss"]["base"] = eval_loss(model, tokenizer, regression)["loss"]
    correct: dict[str, dict[str, list[bool]]] = {"mcq_accuracy": {}, "fact_recall": {}}
    if new is not None:
        correct["new_facts"] = {}
    for which in ("candidate", "live"):
        with on(which):
            losses["new_data_loss"][which] = eval_loss(model, tokenizer, heldout)["loss"] if heldout else None
            if taught:
                answers = greedy_answers(model, tokenizer, [prompt for prompt, _, _ in taught], answer_tokens)
                correct["new_facts"][which] = [states(answer, words, stated_share)
                                               for answer, (_, words, _) in zip(answers, taught, strict=True)]
            losses["regression_loss"][which] = eval_loss(model, tokenizer, regression)["loss"] if regression else None
            if mcq_items and retriever is not None:
                details = score_items(model, tokenizer, mcq_items, prompts=prompts)["details"]
                correct["mcq_accuracy"][which] = [d["chosen"] == d["answer"] for d in details]
                correct["fact_recall"][which] = fact_hits(model, tokenizer, mcq_items, questions, fact_tokens)
    signals = {"new_data_loss": Signal(losses["new_data_loss"]["candidate"], losses["new_data_loss"]["live"],
                                       len(heldout)),
               "regression_loss": Signal(losses["regression_loss"]["candidate"], losses["regression_loss"]["live"],
                                         len(regression), base=losses["regression_loss"].get("base",
                                                                      losses["regression_loss"]["live"]))}
    for name, per_item in correct.items():
        cand, base_ = per_item.get("candidate", []), per_item.get("live", [])
        n = len(cand)
        signals[name] = Signal(sum(cand) / n if n else None, sum(base_) / n if n else None, n,
                               worse=sum(b and not c for c, b in zip(cand, base_, strict=True)),
                               better=sum(c and not b for c, b in zip(cand, base_, strict=True)))
    if taught:  # for the run report: questions whose answer the candidate does not state
        signals["new_facts"].examples = [question[:60] for (_, _, question), stated
                                         in zip(taught, correct["new_facts"]["candidate"], strict=True)
                                         if not stated][:5]
    return signals, {"seconds": round(time.perf_counter() - started, 2), "quantized": quantize,
                     "compared_with": str(live) if live else "base model"}
