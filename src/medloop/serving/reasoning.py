"""Split Qwen3 output into reasoning (`<think>...</think>`) and answer, also when it arrives in pieces."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ReasoningParser:
    """Feed text deltas; get back (reasoning, content) deltas. Never lets a tag leak into content.

    Output that does not start with <think> is all content (non-thinking mode, or a model without
    thinking). A tag split across deltas is held back until it is complete.
    """

    def __init__(self) -> None:
        self.mode = "start"  # start -> reasoning -> after -> content
        self.buffer = ""
        self.reasoning_started = False

    def feed(self, text: str) -> tuple[str, str]:
        self.buffer += text
        reasoning = content = ""
        while True:
            if self.mode == "start":
                stripped = self.buffer.lstrip()
                if stripped.startswith(OPEN):
                    self.buffer = stripped[len(OPEN):].lstrip("\n")
                    self.mode = "reasoning"
                elif OPEN.startswith(stripped):
                    return reasoning, content  # could still become <think>: wait
                else:
                    self.mode = "content"
            elif self.mode == "reasoning":
                if not self.reasoning_started:  # the newline after <think> is layout, not reasoning
                    self.buffer = self.buffer.lstrip("\n")
                    self.reasoning_started = bool(self.buffer)
                if CLOSE in self.buffer:
                    head, self.buffer = self.buffer.split(CLOSE, 1)
                    reasoning += head.rstrip("\n")
                    self.mode = "after"
                else:
                    # Hold back a possible start of </think> and the newlines that may precede it.
                    partial = partial_suffix(self.buffer, CLOSE)
                    body = self.buffer[: len(self.buffer) - partial]
                    keep = partial + len(body) - len(body.rstrip("\n"))
                    reasoning += self.buffer[: len(self.buffer) - keep]
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    return reasoning, content
            elif self.mode == "after":  # drop the blank lines between </think> and the answer
                self.buffer = self.buffer.lstrip("\n")
                if not self.buffer:
                    return reasoning, content
                self.mode = "content"
            else:
                content += self.buffer
                self.buffer = ""
                return reasoning, content

    def flush(self) -> tuple[str, str]:
        """End of output: whatever is held back belongs to the current part."""
        rest, self.buffer = self.buffer, ""
        if self.mode == "reasoning":
            return rest.rstrip("\n"), ""
        return "", rest.lstrip("\n") if self.mode == "after" else rest


def split_reasoning(text: str) -> tuple[str, str]:
    parser = ReasoningParser()
    r1, c1 = parser.feed(text)
    r2, c2 = parser.flush()
    return r1 + r2, c1 + c2


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
