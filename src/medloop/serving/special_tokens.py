"""What a client types is text: a `<|im_start|>system` or `<think>` typed into a message never opens a turn or a
thought of its own, on every engine (docs/serving.md). An engine that tokenises here reads typed special tokens as
their characters (`prompt_ids`); one that renders upstream gets them broken by an invisible character (`defuse`).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

# An engine that renders the prompt elsewhere (vLLM renders the messages into one string, and its tokenizer reads
# every added token in it as the control token) gets the client's strings defused first: a word joiner (U+2060,
# invisible, no meaning) after the first character, so the tokenizer reads the client's characters as text. The
# control tokens are the model's added tokens when its folder is readable here (`--launch`, a shared disk); else
# the shapes chat templates use.
CONTROL_SHAPES = r"<\|[^|<>\s]{1,64}\|>|</?(?:think|tool_call|tool_response|s)>|\[/?INST\]"
WORD_JOINER = "\u2060"


def control_tokens(model_root: str) -> re.Pattern:
    """What a client must not type as control tokens: the model's added tokens (tokenizer.json), and the common
    shapes."""
    tokens = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        added = json.loads((Path(model_root) / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
        tokens = [t["content"] for t in added if len(t["content"]) > 1]
    alternatives = [re.escape(t) for t in sorted(tokens, key=len, reverse=True)] + [CONTROL_SHAPES]
    return re.compile("|".join(alternatives))


def defuse(value, control: re.Pattern):
    """`value` (messages, tool definitions: whatever of a client's the chat template renders) with every control
    token in its strings broken by a word joiner: text stays text."""
    if isinstance(value, str):
        return control.sub(lambda m: m.group()[0] + WORD_JOINER + m.group()[1:], value)
    if isinstance(value, list):
        return [defuse(v, control) for v in value]
    if isinstance(value, dict):
        return {k: defuse(v, control) for k, v in value.items()}
    return value


_MARK = re.compile("\ue000(\\d+)\ue001")  # private-use brackets around the index of a typed special token


def prompt_ids(tokenizer, messages: list[dict], special: list[str], **template_kwargs) -> list[int]:
    """The chat template's rendering of `messages`, tokenised, where each of the tokenizer's `special` tokens a
    client typed is tokenised as text: the template's own control tokens are the only ones in the prompt."""
    messages, typed = _mark_special(messages, special)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
    if not typed:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = []
    for i, part in enumerate(_MARK.split(text)):
        if i % 2:  # a special token's text as the client typed it
            ids += tokenizer(typed[int(part)], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif part:
            ids += tokenizer(part, add_special_tokens=False)["input_ids"]
    return ids


def _mark_special(messages: list[dict], special: list[str]) -> tuple[list[dict], list[str]]:
    """Messages with each special token the client typed replaced by a marker, and those tokens in order."""
    typed: list[str] = []
    pattern = re.compile("|".join(re.escape(t) for t in sorted(special, key=len, reverse=True)))

    def mark(m: re.Match) -> str:
        typed.append(m.group())
        return f"\ue000{len(typed) - 1}\ue001"

    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and special and pattern.search(content):
            message = {**message, "content": pattern.sub(mark, content)}
        out.append(message)
    return out, typed
