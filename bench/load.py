"""Load benchmark (not a test): N concurrent streaming clients on loopback, bounded in count and time.

    .venv/bin/python bench/load.py                      # tiny random Qwen3 on the local engine, in-process
    .venv/bin/python bench/load.py --clients 64 --requests 256
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --model smollm2-135m-instruct

Prints requests/s, p50/p99 latency (and time to first token), and the error count, next to the same
load sent one request at a time (the baseline): throughput ratio = concurrent / sequential.
Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def start_tiny_server() -> tuple[str, str]:
    import uvicorn

    from medloop.config import Settings
    from medloop.serving import LocalEngine, create_app
    from medloop.testing import tiny_qwen3

    work = Path(tempfile.mkdtemp(prefix="medloop-load-"))
    engine = LocalEngine(str(tiny_qwen3(work / "model")), served_name="tiny", max_batch_size=32)
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(home=work / "home"), engine, None),
                                           host="127.0.0.1", port=8791, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return "http://127.0.0.1:8791", "tiny"


async def one(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int) -> tuple[float, float, bool]:
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"患者{i}的血压是多少需要治疗？"}]}
    t0 = time.perf_counter()
    first = None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            last = ""
            async for line in r.aiter_lines():
                if line.startswith("data:") and first is None:
                    first = time.perf_counter() - t0
                last = line or last
            ok = r.status_code == 200 and last == "data: [DONE]"
    except httpx.HTTPError:
        ok = False
    return time.perf_counter() - t0, first or 0.0, ok


async def run(url: str, model: str, clients: int, requests: int, max_tokens: int, deadline_s: float) -> dict:
    sem = asyncio.Semaphore(clients)
    stop_at = time.perf_counter() + deadline_s

    async def bounded(client, i):
        async with sem:
            if time.perf_counter() > stop_at:
                return None
            return await one(client, url, model, i, max_tokens)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients + 8)) as client:
        results = [r for r in await asyncio.gather(*(bounded(client, i) for i in range(requests))) if r]
    wall = time.perf_counter() - t0
    lat = [r[0] for r in results]
    ttft = [r[1] for r in results]
    return {"clients": clients, "done": len(results), "errors": sum(not r[2] for r in results),
            "rps": len(results) / wall, "p50": np.percentile(lat, 50) * 1000, "p99": np.percentile(lat, 99) * 1000,
            "ttft_p50": statistics.median(ttft) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=300, help="stop sending new requests after this (s)")
    args = parser.parse_args()
    if args.url:
        host = urlparse(args.url).hostname or ""
        if not (host == "localhost" or host.startswith("127.") or host == "::1"):
            sys.exit("bench/load.py only targets loopback addresses")
        url, model = args.url.rstrip("/"), args.model
    else:
        url, model = start_tiny_server()
    asyncio.run(run(url, model, 4, 8, args.max_tokens, args.deadline))  # warm up
    base = asyncio.run(run(url, model, 1, max(8, args.requests // 16), args.max_tokens, args.deadline))
    load = asyncio.run(run(url, model, args.clients, args.requests, args.max_tokens, args.deadline))
    for r in (base, load):
        print(f"{r['clients']:3d} clients: {r['done']} requests, {r['errors']} errors, {r['rps']:.1f} req/s, "
              f"p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, time to first token p50 {r['ttft_p50']:.0f} ms")
    print(f"throughput ratio {args.clients} clients / 1 client: {load['rps'] / base['rps']:.2f}x")


if __name__ == "__main__":
    main()
