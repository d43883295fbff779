"""Multiple-choice evaluation on real benchmark files, scored by option log-likelihood.

Reads JSONL (or CSV) in the layouts the public medical sets use, any letter case:
- medloop / MIRAGE: `question`, `options` (dict or list), `answer` (letter or option text);
- MedQA: `options` dict, `answer` (option text) and `answer_idx` (letter);
- MedMCQA: `opa`..`ope`, `cop`: 1-based in the original release, 0-based on the HF hub. A file with a `cop` of 0
  is 0-based, one with a `cop` as large as its option count is 1-based; one with neither could be either (a
  0-based subset that never answers A) and is refused unless the caller names the base (`cop_base`);
- CMMLU / C-Eval: `Question`, columns `A`..`E`, `Answer`.
An answer that is none of the options is an error naming the file and line, never a silent zero.

Scoring computes the shared prompt once (its KV cache) and every option from it in one batched forward.
"""

from __future__ import annotations

import csv
import string
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from medloop.jsonl import JSONLError, json_objects

LETTERS = string.ascii_uppercase


class MCQFormatError(ValueError):
    pass


@dataclass
class MCQItem:
    question: str
    options: dict[str, str]  # letter -> text
    answer: str  # a letter of options
    line: int
    fact: str = ""  # the guideline's key fact, for the gate's generation check


def _field(row: dict, *names: str):
    lowered = {str(k).lower(): v for k, v in row.items()}
    return next((lowered[n] for n in names if lowered.get(n) not in (None, "")), None)


def _options(row: dict) -> dict[str, str]:
    options = _field(row, "options", "choices")
    if isinstance(options, dict):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    if isinstance(options, list):
        return {LETTERS[i]: str(v) for i, v in enumerate(options)}
    medmcqa = [_field(row, f"op{c}") for c in "abcde"]
    if medmcqa[0] is not None:
        return {LETTERS[i]: str(v) for i, v in enumerate(medmcqa) if v is not None}
    columns = {c: _field(row, c.lower()) for c in "ABCDE"}
    return {c: str(v) for c, v in columns.items() if v is not None}


def _answer(row: dict, options: dict[str, str], cop_base: int) -> str | None:
    cop = _field(row, "cop")
    if cop is not None and str(cop).strip().lstrip("-").isdigit():
        index = int(cop) - cop_base
        return LETTERS[index] if 0 <= index < len(options) else f"cop {cop}"
    given = _field(row, "answer_idx", "answer", "label", "target")
    if given is None:
        return None
    if isinstance(given, int) and not isinstance(given, bool):
        return LETTERS[given] if 0 <= given < len(options) else str(given)
    text = str(given).strip()
    if text.upper() in options:
        return text.upper()
    by_text = [k for k, v in options.items() if v.strip().casefold() == text.casefold()]
    return by_text[0] if len(by_text) == 1 else text


def _cop_base(path: Path, rows: list[tuple[int, dict]], given: int | None) -> int:
    cops = [(line, int(c), len(_options(r))) for line, r in rows
            if (c := _field(r, "cop")) is not None and str(c).strip().isdigit()]
    if given is not None or not cops:
        return 1 if given is None else given
    zero = next((line for line, cop, _ in cops if cop == 0), None)
    top = next((line for line, cop, n in cops if cop == n), None)
    if zero is not None and top is not None:
        raise MCQFormatError(f"{path}: `cop` is 0 on line {zero} (0-based) and as large as the option count on line "
                             f"{top} (1-based): one of them is wrong")
    if zero is None and top is None:
        raise MCQFormatError(f"{path}: every `cop` lies between 1 and the option count less one, so the file may be "
                             "0-based (as on the HF hub) or 1-based (the original MedMCQA release): name the base "
                             "(`medloop eval mcq --cop-base 0` or `1`)")
    return 0 if zero is not None else 1


def _rows(path: Path) -> list[tuple[int, dict]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        return [(i, row) for i, row in enumerate(csv.DictReader(text.splitlines()), 2)]
    try:
        return list(json_objects(text))
    except JSONLError as e:
        raise MCQFormatError(f"{path}:{e.line}: {e.message}") from e


def load_mcq(path: Path, cop_base: int | None = None) -> list[MCQItem]:
    rows = _rows(path)
    cop_base = _cop_base(path, rows, cop_base)
    items = []
    for line, row in rows:
        question, options = _field(row, "question"), _options(row)
        if not question:
            raise MCQFormatError(f"{path}:{line}: no 'question'")
        if len(options) < 2:
            raise MCQFormatError(f"{path}:{line}: fewer than two options (options / opa.. / A..)")
        answer = _answer(row, options, cop_base)
        if answer not in options:
            raise MCQFormatError(f"{path}:{line}: answer {answer!r} is not one of the options "
                                 f"{', '.join(options)}")
        items.append(MCQItem(str(question), options, answer, line, str(_field(row, "fact") or "")))
    return items


@torch.inference_mode()
def option_logprobs(model, prompt_ids: list[int], options_ids: list[list[int]]) -> list[float]:
    """Mean log-probability per token of each option after the prompt. The prompt runs once; its cache is
    repeated for the options, which run together in one forward (right-padded)."""
    device = next(model.parameters()).device
    out = model(torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1)  # last position only
    first = out.logits[0, -1].float().log_softmax(-1)
    cache = out.cache
    cache.batch_repeat_interleave(len(options_ids))
    width = max(map(len, options_ids))
    ids = torch.tensor([o + [0] * (width - len(o)) for o in options_ids], device=device)
    mask = torch.tensor([[1] * (len(prompt_ids) + len(o)) + [0] * (width - len(o)) for o in options_ids],
                        device=device)
    logp = model(ids, cache=cache, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
    scores = []
    for i, option in enumerate(options_ids):
        total = first[option[0]] + sum(logp[i, j - 1, option[j]] for j in range(1, len(option)))
        scores.append(float(total) / len(option))  # per token: long options are not penalised for their length
    return scores


def item_prompt(tokenizer, item: MCQItem, retriever=None, k: int = 3, *, options: bool = True) -> list[int]:
    """The chat prompt of one item: the question with its lettered options (or, `options=False`, the question
    as a user asks it), and (given a retriever) the evidence serving would put in front of it, retrieved for the
    question alone, not the option texts."""
    from medloop.retrieval import grounding

    question = item.question
    if options:
        question += "\n" + "\n".join(f"{key}. {text}" for key, text in item.options.items())
    messages = [{"role": "user", "content": question}]
    if retriever is not None:
        grounded = grounding.ground(retriever, [{"role": "user", "content": item.question}], k)[0]
        messages = [*grounded[:-1], {"role": "user", "content": question}]
    return chat_prompt(tokenizer, messages)


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids the model answers `messages` from (its chat template, no thinking)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def score_items(model, tokenizer, items: list[MCQItem], retriever=None, k: int = 3, on_item=None,
                prompts: list[list[int]] | None = None) -> dict:
    """`prompts`: the items' prompts when already built (they do not depend on the model or adapter)."""
    correct, details, started = 0, [], time.perf_counter()
    prompts = prompts or [item_prompt(tokenizer, item, retriever, k) for item in items]
    for item, prompt in zip(items, prompts, strict=True):
        options_ids = [tokenizer(f"{key}. {text}", add_special_tokens=False)["input_ids"]
                       for key, text in item.options.items()]
        scores = dict(zip(item.options, option_logprobs(model, prompt, options_ids), strict=True))
        chosen = max(scores, key=scores.get)
        correct += chosen == item.answer
        details.append({"line": item.line, "answer": item.answer, "chosen": chosen, "scores": scores})
        if on_item:
            on_item()
    return {"accuracy": correct / max(len(items), 1), "details": details,
            "seconds_per_item": (time.perf_counter() - started) / max(len(items), 1)}


def mcq_accuracy(model, tokenizer, items: list[MCQItem], retriever=None, k: int = 3, on_item=None) -> dict:
    """Accuracy without evidence and (given a retriever) with the evidence serving would put in the prompt."""
    result = {"questions": len(items), "no_evidence": score_items(model, tokenizer, items, None, k, on_item)}
    if retriever is not None:
        result["evidence"] = score_items(model, tokenizer, items, retriever, k, on_item)
    return result
