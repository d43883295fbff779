"""SFT data: three common layouts -> chat messages -> Qwen3-rendered tokens with assistant-only labels."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IGNORE = -100
ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
    "bot": "assistant", "chatgpt": "assistant", "system": "system",
}
ASSISTANT_TURN = re.compile(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", re.DOTALL)


class BadSample(ValueError):
    pass


@dataclass
class DataReport:
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    read: int = 0
    dropped: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, reason)
    layouts: Counter = field(default_factory=Counter)

    def reasons(self) -> Counter:
        return Counter(reason.split(":")[0] for _, _, reason in self.dropped)


def detect_layout(obj: dict) -> str:
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "messages"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    raise BadSample("unknown layout: expected 'conversations', 'messages' or 'instruction'/'output'")


def to_messages(obj: dict) -> list[dict]:
    """One sample in any supported layout -> OpenAI-style messages (validated)."""
    if not isinstance(obj, dict):
        raise BadSample("not a JSON object")
    layout = detect_layout(obj)
    if layout == "alpaca":
        messages = [{"role": "system", "content": obj["system"]}] if obj.get("system") else []
        for q, a in obj.get("history") or []:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        prompt = str(obj["instruction"]) + (f"\n\n{obj['input']}" if obj.get("input") else "")
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}]
    else:
        turns = obj["conversations"] if layout == "sharegpt" else obj["messages"]
        if not isinstance(turns, list):
            raise BadSample(f"'{'conversations' if layout == 'sharegpt' else 'messages'}' is not a list")
        messages = []
        for t in turns:
            if not isinstance(t, dict):
                raise BadSample("a turn is not an object")
            role = t.get("from") if layout == "sharegpt" else t.get("role")
            content = t.get("value") if layout == "sharegpt" else t.get("content")
            if str(role).lower() not in ROLE_ALIASES:
                raise BadSample(f"unknown role '{role}'")
            message = {"role": ROLE_ALIASES[str(role).lower()], "content": content}
            if t.get("reasoning_content"):
                message["reasoning_content"] = t["reasoning_content"]
            messages.append(message)
    for m in messages:
        if not isinstance(m["content"], str):
            raise BadSample(f"{m['role']} content is not text")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadSample("no assistant answer")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise BadSample("no user turn")
    if messages[-1]["role"] != "assistant":
        raise BadSample("last turn is not the assistant's")
    return messages


def load_samples(paths: list[Path], *, strict: bool = False) -> tuple[list[list[dict]], DataReport]:
    """Read JSONL (or a JSON array) files; bad lines are reported with their line number and skipped."""
    import hashlib

    report = DataReport()
    samples = []
    for path in paths:
        raw = Path(path).read_bytes()
        report.files[str(path)] = hashlib.sha256(raw).hexdigest()
        text = raw.decode("utf-8-sig", errors="replace")
        if text.lstrip().startswith("["):
            try:
                rows = [(i, json.dumps(o, ensure_ascii=False)) for i, o in enumerate(json.loads(text), 1)]
            except json.JSONDecodeError as e:
                raise BadSample(f"{path}: invalid JSON array ({e.msg} at line {e.lineno})") from e
        else:
            rows = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        for lineno, line in rows:
            report.read += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                reason = f"invalid JSON: {e.msg}"
            else:
                try:
                    samples.append(to_messages(obj))
                    report.layouts[detect_layout(obj)] += 1
                    continue
                except (BadSample, KeyError, TypeError, ValueError) as e:
                    reason = f"bad sample: {e}"
            if strict:
                raise BadSample(f"{path}:{lineno}: {reason}")
            report.dropped.append((str(path), lineno, reason))
    return samples, report


def render(tokenizer, messages: list[dict], *, max_length: int, terms: list[str] | None = None) -> dict:
    """Tokenise one conversation with the model's own chat template.

    Labels are the token ids inside assistant turns (content and its closing <|im_end|>) and -100
    elsewhere. The Qwen3 template renders the final assistant turn as think-then-answer: with its
    <think> block when the sample has one, with an empty one (Qwen3's non-thinking form) when not.
    `term_ids` numbers each occurrence of a medical term outside assistant turns (for masking).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span(1) for m in ASSISTANT_TURN.finditer(text)]
    labels, term_ids = [], []
    term_spans = _term_spans(text, spans, terms) if terms else []
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = any(s <= start and end <= e for s, e in spans)
        labels.append(tid if inside else IGNORE)
        term_ids.append(next((n for n, (s, e) in enumerate(term_spans, 1) if start < e and end > s), 0))
    ids = enc["input_ids"][:max_length]
    return {"input_ids": ids, "labels": labels[:max_length], "term_ids": term_ids[:max_length],
            "truncated": len(enc["input_ids"]) > max_length}


def _term_spans(text: str, assistant_spans: list[tuple[int, int]], terms: list[str]) -> list[tuple[int, int]]:
    pattern = re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)))
    return [m.span() for m in pattern.finditer(text)
            if not any(s <= m.start() < e for s, e in assistant_spans)]


def split(samples: list, val_size: float | int, seed: int) -> tuple[list, list]:
    """Seeded split; val_size < 1 is a fraction, otherwise a count (capped to leave training data)."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_size * len(samples))) if val_size < 1 else int(val_size)
    n_val = min(n_val, max(0, len(samples) - 1))
    val = [samples[i] for i in order[:n_val]]
    train = [samples[i] for i in order[n_val:]]
    return train, val


def statistics(rows: list[dict]) -> dict:
    if not rows:
        return {"samples": 0}
    lengths = sorted(len(r["input_ids"]) for r in rows)
    trained = sum(sum(1 for x in r["labels"] if x != IGNORE) for r in rows)
    return {
        "samples": len(rows),
        "tokens": sum(lengths),
        "trained_tokens": trained,
        "mean_length": round(sum(lengths) / len(lengths), 1),
        "p50_length": lengths[len(lengths) // 2],
        "max_length": lengths[-1],
        "truncated": sum(r.get("truncated", False) for r in rows),
    }
