"""Talking to a served app over loopback: requests sent together, streams checked, the official client."""

from __future__ import annotations


def stream_succeeded(status: int, lines: list[str]) -> bool:
    """Did a streamed chat answer succeed? Only with status 200, a finish_reason, no error chunk and a final
    `data: [DONE]`: an error after the stream started arrives as an error chunk and then [DONE] (as in vLLM),
    and counts as a failure."""
    import json

    data = [line[5:].strip() for line in lines if line.startswith("data:")]
    if status != 200 or not data or data[-1] != "[DONE]":
        return False
    finished = False
    for item in data[:-1]:
        payload = json.loads(item)
        if "error" in payload:
            return False
        finished = finished or any(c.get("finish_reason") for c in payload.get("choices") or [])
    return finished


def send_together(url: str, bodies: list[dict]) -> list[tuple[int, object]]:
    """Post chat bodies at once (so the server may batch them); for each, (status, the parsed JSON answer), or
    (status, the non-empty lines) for a streamed one."""
    import asyncio
    import json

    import httpx

    async def run():
        async with httpx.AsyncClient(timeout=300) as client:
            async def send(body):
                if not body.get("stream"):
                    r = await client.post(url + "/v1/chat/completions", json=body)
                    try:
                        return r.status_code, r.json()
                    except json.JSONDecodeError:
                        return r.status_code, r.text
                async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    return r.status_code, [line async for line in r.aiter_lines() if line]
            return await asyncio.gather(*(send(b) for b in bodies))

    return asyncio.run(run())


def ask(client, question: str, model: str, **kw):
    """One chat question through the openai client, greedy and short unless told otherwise."""
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kw)
