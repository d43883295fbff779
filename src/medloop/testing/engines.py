"""Engines that stand in for a model where the real one cannot be made to do something on demand."""

from __future__ import annotations

from medloop.serving.engine import ServedAdapters


class ScriptedEngine:
    """Stands in for a model that thinks, or calls a tool: emits fixed text, then a fixed tool call, in pieces through
    the engine interface. `serves`: the OPTIONAL_FIELDS it accepts (for the gateway's side of the chat contract; the
    real vLLM's side is tests/serving/test_vllm.py)."""

    name = "scripted"

    def __init__(self, text: str, name: str = "thinker", call: tuple[str, str] | None = None,
                 serves: frozenset[str] = frozenset()):
        self.text, self.call = text, call  # call: (function name, JSON arguments)
        self.adapters = ServedAdapters(name)
        self.serves = serves

    async def start(self, adapters):
        pass

    async def close(self):
        pass

    def health(self):
        return None

    async def stream(self, request):
        import asyncio

        from medloop.serving.engine import Delta

        for i in range(0, len(self.text), 3):
            await asyncio.sleep(0)
            yield Delta(text=self.text[i:i + 3])
        if self.call:
            name, arguments = self.call
            yield Delta(tool_calls=[{"index": 0, "id": "call-1", "type": "function", "function": {"name": name}}])
            for i in range(0, len(arguments), 5):
                yield Delta(tool_calls=[{"index": 0, "function": {"arguments": arguments[i:i + 5]}}])
        yield Delta(finish_reason="tool_calls" if self.call else "stop", prompt_tokens=5, completion_tokens=9)
