"""Every GPU figure in one prepared run (not a test): training at the Qwen3-1.7B and -8B shapes, three ways, and
the local engine at 1, 8 and 32 clients. Built for a device lent for minutes: one command, each part's results
written as soon as it has them, a running summary printed.

    python bench/gpu.py                  # on the device (about 8 minutes on one H100/H200, installs included)
    python bench/gpu.py --dry-run        # the same code path on CPU with tiny shapes, minutes on 2 cores (tested)

On the device it
1. installs what the image lacks from a carried folder of wheels (`--wheels .whl`, when present);
2. builds Qwen3-shaped models with random weights on the real tokenizer (throughput and memory depend on shapes
   and lengths, not on weight values): 1.7B and 8B;
3. trains `--steps` steps three ways on the same tokenised rows of realistic length (bench/training.py): the seed's
   way (HF Trainer, every sample padded to 2048, 4 x 2, gradient checkpointing, paged 8-bit AdamW, r64), TRL's
   SFTTrainer with dynamic padding, and `medloop train` whose micro-batch fills a memory budget (8 GB for 1.7B,
   24 GB for 8B), all QLoRA (4-bit NF4) -> bench/results/training-gpu-1.7b.json, training-gpu-8b.json;
4. serves the 1.7B shape with a LoRA on the local engine: 1, 8 and 32 concurrent greedy streams of `--tokens`
   tokens (ignore_eos), tokens/s and time to first token -> bench/results/serving-gpu.json.
Each file names the device. Goals (ratios in one run): training >= 3x the seed's way at <= 8 GB (1.7B); the 8B
shape >= 10 samples/s at <= 24 GB; the local engine >= 100 tok/s for one stream and >= 1,500 at 32 (1.7B + LoRA).

What a device image typically lacks (wheels to carry, for Python 3.12, manylinux x86_64; the team's device notes
list what worked there):
bitsandbytes, trl, datasets, dill, multiprocess, xxhash, peft, accelerate (if absent), pydantic, pydantic-core,
pydantic-settings, python-dotenv, annotated-types, typing-inspection, typer, rich (if absent), filelock, psutil,
openai, httpx, matplotlib (training's loss plot), swanlab is not needed (`swanlab_mode` disabled). Retrieval's
dependencies (faiss-cpu, jieba, PyStemmer, wordfreq) are not imported by this script.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import save  # noqa: E402

BUDGET_GB = {"1.7b": 8, "8b": 24, "tiny": 1}


def install(wheels: Path) -> None:
    """The carried wheels into /tmp/site, ahead of everything else for this process and its children."""
    files = sorted(glob.glob(str(wheels / "*.whl")))
    if not files:
        return
    site = "/tmp/site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", site, *files], check=True)
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join([site, str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])


def train_shape(shape: str, model: Path, args, device: str) -> dict:
    """bench/training.py at this shape, in its own processes; its result file."""
    name = f"training-gpu-{shape}" if not args.dry_run else "training-gpu-dry-run"
    cmd = [sys.executable, str(ROOT / "bench" / "training.py"), "--model", str(model), "--steps", str(args.steps),
           "--preset", "v1", "--max-length", "256" if args.dry_run else "2048", "--memory-budget-gb",
           str(BUDGET_GB[shape]), "--name", name]
    cmd += [] if args.dry_run else ["--quantize"]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT / "src"))})
    return {"result": f"{name}.json", "device": device}


async def streams(engine, model: str, clients: int, tokens: int) -> dict:
    from medloop.serving.engine import GenerationRequest

    async def one(i: int) -> tuple[float, int]:
        t0, first, n = time.perf_counter(), None, 0
        request = GenerationRequest(model, [{"role": "user", "content": f"Patient {i}: what blood pressure target?"}],
                                    max_tokens=tokens, temperature=0, ignore_eos=True,
                                    chat_template_kwargs={"enable_thinking": False})
        async for delta in engine.stream(request):
            if first is None and delta.text:
                first = time.perf_counter() - t0
            n = delta.completion_tokens or n
        return first or 0.0, n

    await one(-1)  # warm up
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "tokens_per_s": round(sum(n for _, n in runs) / wall, 1),
            "ttft_p50_s": round(statistics.median(f for f, _ in runs), 3), "wall_s": round(wall, 2)}


def serve_shape(model: Path, args, device: str) -> dict:
    from medloop.serving.local_engine import LocalEngine
    from medloop.testing import make_adapter

    adapter = make_adapter(model, model.parent / "lora", seed=1, rank=16, targets="all")
    engine = LocalEngine(str(model), served_name="base", adapters={"lora": str(adapter)}, max_batch_size=32)
    figures = {"device": device, "tokens": args.tokens, "lora": "random, r16, all projections"}
    for clients in args.clients:
        figures[f"{clients}_clients"] = asyncio.run(streams(engine, "lora", clients, args.tokens))
        print(f"local engine, {clients:2d} clients: {figures[f'{clients}_clients']['tokens_per_s']} tok/s, ttft p50 "
              f"{figures[f'{clients}_clients']['ttft_p50_s']} s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, a few steps: the code path only")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--shapes", nargs="+", default=["1.7b", "8b"])
    args = parser.parse_args()
    if args.dry_run:
        args.shapes, args.steps, args.tokens, args.clients = ["tiny"], 1, 8, [1, 2]
    started = time.perf_counter()
    install(args.wheels)
    import torch

    from medloop.testing import qwen3_shaped

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    if not args.dry_run and device == "cpu":
        sys.exit("no GPU: run with --dry-run")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, device {device}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="medloop-gpu-"))
    summary = {}
    for shape in args.shapes:
        model = qwen3_shaped(work / shape / "model", shape)
        summary[f"training {shape}"] = train_shape(shape, model, args, device)
        print(f"[{time.perf_counter() - started:.0f} s] training {shape} done", flush=True)
        if shape in {"1.7b", "tiny"}:
            figures = serve_shape(model, args, device)
            save("serving-gpu" if not args.dry_run else "serving-gpu-dry-run", vars(args) | {"wheels": str(args.wheels),
                                                                                             "shape": shape}, figures)
            print(f"[{time.perf_counter() - started:.0f} s] serving {shape} done", flush=True)
    print(f"all parts done in {time.perf_counter() - started:.0f} s: {summary}")


if __name__ == "__main__":
    main()
