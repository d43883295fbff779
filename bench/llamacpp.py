"""llama.cpp's llama-server alone, medloop in front of it (`--engine llamacpp --launch`, without and with evidence),
and medloop's local engine, side by side in one run (not a test).

    .venv/bin/python bench/llamacpp.py                      # SmolLM2-135M (the embedded Q4_1 GGUF), 64 tokens
    .venv/bin/python bench/llamacpp.py --clients 1 8 32 --tokens 64 --requests-per-client 2

The same model everywhere: the embedded SmolLM2-135M-Instruct GGUF, read as it is by llama-server and dequantised
by the local engine; the base model, no adapter. llama-server runs with the flags medloop's launcher gives it
(`-np 32 -c 32768`, every core), alone; then behind medloop. Each side runs alone on an idle machine, as a server
process of its own: greedy requests of exactly `--tokens` tokens (`ignore_eos`), streamed, from 1, 8 and 32
concurrent clients (`bench/engines.py`'s load, a connection per request on every side: llama-server drops a reused
one now and then, which would count against it). Saves bench/results/llamacpp.json: tokens/s and time to first
token p50 per side and client count, and the ratios medloop-on-llama.cpp / llama.cpp and / the local engine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import load, medloop_serve, wait_ready  # noqa: E402
from medloop.config import Settings  # noqa: E402
from medloop.models import DEFAULT_CHAT_MODEL  # noqa: E402
from medloop.testing import LLAMA_CPP  # noqa: E402
from results import save  # noqa: E402

SERVED = "base"
PARALLEL, CONTEXT = 32, 32768


def llama_alone(work: Path, port: int) -> tuple[subprocess.Popen, str, Path]:
    from medloop.serving.llamacpp_engine import Launcher

    settings = Settings(home=work / "alone", llamacpp={"folder": LLAMA_CPP, "parallel": PARALLEL,
                                                        "context": CONTEXT})
    log = work / "llama-server.log"
    cmd = Launcher(DEFAULT_CHAT_MODEL, SERVED, settings).command(port, [])
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def medloop(work: Path, engine: str, rag: bool) -> tuple[subprocess.Popen, str, Path]:
    name = f"medloop-{engine}" + ("-rag" if rag else "")
    env = {"MEDLOOP_HOME": str(work / name), "MEDLOOP_SERVING__SERVED_MODEL_NAME": SERVED,
           "MEDLOOP_SERVING__MAX_BATCH_SIZE": "32", "MEDLOOP_LLAMACPP__FOLDER": str(LLAMA_CPP),
           "MEDLOOP_LLAMACPP__PARALLEL": str(PARALLEL), "MEDLOOP_LLAMACPP__CONTEXT": str(CONTEXT)}
    args = ["--engine", engine, *(["--launch"] if engine == "llamacpp" else []), "--demo" if rag else "--no-rag"]
    return medloop_serve(args, env, work / f"{name}.log")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8481, help="llama-server's port when alone")
    args = parser.parse_args()
    if not (LLAMA_CPP / "bin" / "llama-server").exists():
        sys.exit(f"no llama-server in {LLAMA_CPP}: run scripts/llama-server.sh first")
    work = Path(tempfile.mkdtemp(prefix="medloop-llamacpp-"))
    sides = {"llamacpp": lambda: llama_alone(work, args.port),
             "medloop-llamacpp": lambda: medloop(work, "llamacpp", rag=False),
             "medloop-llamacpp-evidence": lambda: medloop(work, "llamacpp", rag=True),
             "medloop-local": lambda: medloop(work, "local", rag=False)}
    figures = {}
    for side, start in sides.items():
        proc, url, log = start()
        try:
            wait_ready(url, proc, log)
            figures[side] = [asyncio.run(load(url, SERVED, n, args.requests_per_client, args.tokens,
                                              keep_alive=False)) for n in args.clients]
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        for row in figures[side]:
            print(f"{side:26s} {row['clients']:2d} clients: {row['tokens_per_s']} tok/s, "
                  f"ttft p50 {row['ttft_p50_s']} s, {row['failed']} failed")

    def ratio(a: str, b: str) -> dict:
        return {str(x["clients"]): round(x["tokens_per_s"] / y["tokens_per_s"], 2)
                for x, y in zip(figures[a], figures[b], strict=True)}

    figures["medloop_vs_llamacpp"] = ratio("medloop-llamacpp", "llamacpp")
    figures["medloop_llamacpp_vs_local"] = ratio("medloop-llamacpp", "medloop-local")
    figures["evidence_vs_none"] = ratio("medloop-llamacpp-evidence", "medloop-llamacpp")
    print("medloop on llama.cpp / llama.cpp alone:", figures["medloop_vs_llamacpp"])
    print("medloop on llama.cpp / the local engine:", figures["medloop_llamacpp_vs_local"])
    save("llamacpp", {**vars(args), "model": "SmolLM2-135M-Instruct (embedded Q4_1 GGUF)", "adapter": None,
                      "parallel": PARALLEL, "context": CONTEXT}, figures)


if __name__ == "__main__":
    main()
