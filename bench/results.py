"""Where every bench keeps its output: one JSON per run under bench/results/, with the machine, the library
versions and the settings beside the figures, so a figure in the README can be traced to the run that made it."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
from pathlib import Path

# A test's run (bench/gpu.py --dry-run) writes elsewhere, so the saved figures stay the measured ones.
RESULTS = Path(os.environ.get("MEDLOOP_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "sentence-transformers", "faiss-cpu", "scipy",
             "fastapi", "uvicorn", "vllm")


def machine() -> dict:
    import psutil
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpu": gpu}


def versions() -> dict:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def ingested(report, synced=None):
    """The ingest a bench measures on, refused when partial: a failed file or an empty index would put the zeros of
    a broken run into bench/results/ as if they were measured."""
    failed = [f"{f.path}: {f.error}" for f in report.failed]
    if not report.files or failed or (synced is not None and not synced.total):
        raise SystemExit("refusing to measure on a partial ingest: " + ("; ".join(failed) or "no chunks indexed"))
    return report


def sample_retriever(prefix: str):
    """(settings, retriever): the sample guidelines ingested (refused when partial) and indexed with the default
    embedder in a fresh temporary data home."""
    import tempfile

    from medloop.config import Settings
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import Retriever, load_embedder, sync_index
    from medloop.testing import GUIDELINES

    settings = Settings(home=Path(tempfile.mkdtemp(prefix=prefix)))
    store = KnowledgeStore(settings.knowledge_db)
    ingested(ingest_paths(store, [GUIDELINES]))
    embedder = load_embedder(settings.retrieval.embedder)
    sync_index(settings, store, embedder=embedder)
    return settings, Retriever(settings, store=store, embedder=embedder)


def save(bench: str, settings: dict, figures: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"bench": bench, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(),
              "versions": versions(), "settings": settings, "figures": figures}
    path = RESULTS / f"{bench}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"saved {path}")
    return path
