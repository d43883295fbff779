"""Ingesting a large Chinese guideline file: the defaults (an English-only embedder does not read Chinese
chunks) against embedding every chunk (what ingestion did before), side by side.

Then the end-to-end search latency on that index (Chinese questions: lexicon, BM25 top-k without a full
sort, relevance, records). The file is the sample Chinese guidelines' sentences, replicated and varied (each
copy numbered and its sentences reordered) to the requested size. The embed-everything side runs on
`--baseline-mb` (it runs at embedding speed, ~15 chunks/s here) and is scaled to the full size by its measured
chunks/s.
Saves bench/results/ingest_chinese.json.

    python bench/ingest_chinese.py --mb 50 --baseline-mb 1
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import ingested, save  # noqa: E402


def chinese_text(megabytes: float, seed: int = 0) -> str:
    folder = resources.files("medloop").joinpath("data/guidelines")
    sentences = []
    for name in ("cn-hypertension-2024.md", "cn-t2dm-2020.md", "cn-influenza-2025.md", "comorbidity-notes.md"):
        body = folder.joinpath(name).read_text("utf-8").split("---", 2)[2]
        sentences += [s for s in re.split(r"(?<=[。；])", body) if s.strip() and not s.startswith("#")]
    rng, parts, size, n = random.Random(seed), ["# 大型指南汇编\n"], 0, 0
    while size < megabytes * 2**20:
        n += 1
        rng.shuffle(sentences)
        section = f"\n## 第{n}节\n" + "".join(s.strip() for s in sentences[:12]) + f"（第{n}版注释）\n"
        parts.append(section)
        size += len(section.encode())
    front = "---\nid: bench-zh\ntitle: 大型中文指南\nversion: \"1\"\nissuer: bench\npublished: 2025-01-01\n" \
            "language: zh\n---\n"
    return front + "".join(parts)


QUESTIONS = ["一般高血压患者血压应控制在多少以下", "流感患者什么时候开始抗病毒治疗", "2型糖尿病首选什么降糖药",
             "冠心病合并慢阻肺能用β受体阻滞剂吗", "HbA1c多少可以诊断糖尿病", "儿童发热能用阿司匹林吗",
             "骨折怎么处理", "高血压合并蛋白尿首选什么药"]


def query_latency(settings, store, embedder, rounds: int = 25) -> dict:
    """End-to-end search latency on the ingested index: lexicon, BM25 top-k, relevance, records."""
    from medloop.retrieval import Retriever
    from retrieval import latency

    return latency(Retriever(settings, store=store, embedder=embedder), QUESTIONS, rounds)


def ingest(megabytes: float, multilingual: bool, latency: bool = False) -> dict:
    from medloop.config import Settings
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import load_embedder, sync_index

    home = Path(tempfile.mkdtemp(prefix="medloop-zh-"))
    os.environ["MEDLOOP_HOME"] = str(home)
    settings = Settings(embedder_multilingual=multilingual)
    path = home / "guide.md"
    path.write_text(chinese_text(megabytes), encoding="utf-8")
    embedder = load_embedder(settings.embedder)
    start = time.perf_counter()
    with KnowledgeStore(settings.knowledge_db) as store:
        ingested(ingest_paths(store, [path]))
        parsed = time.perf_counter() - start
        result = sync_index(settings, store, embedder=embedder)
        seconds = time.perf_counter() - start
        query = query_latency(settings, store, embedder) if latency else None
    shutil.rmtree(home, ignore_errors=True)
    return {"mb": megabytes, "chunks": result.total, "seconds": round(seconds, 1), "parse_store_s": round(parsed, 1),
            "chunks_per_s": round(result.total / seconds, 1), "query": query}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--baseline-mb", type=float, default=1)
    args = parser.parse_args()
    ours = ingest(args.mb, multilingual=False, latency=True)
    print(f"defaults (Chinese not embedded): {ours['mb']} MB, {ours['chunks']} chunks in {ours['seconds']} s "
          f"({ours['chunks_per_s']} chunks/s); Chinese search p50 {ours['query']['p50_ms']} ms, "
          f"p99 {ours['query']['p99_ms']} ms")
    before = ingest(args.baseline_mb, multilingual=True)
    projected = ours["chunks"] / before["chunks_per_s"]
    print(f"embedding every chunk: {before['mb']} MB, {before['chunks']} chunks in {before['seconds']} s "
          f"({before['chunks_per_s']} chunks/s): {args.mb} MB would take ~{projected / 60:.0f} min")
    ratio = projected / ours["seconds"]
    print(f"{ratio:.1f}x faster; target <= 300 s for 50 MB: {'met' if ours['seconds'] <= 300 else 'missed'}")
    save("ingest_chinese", {"mb": args.mb, "baseline_mb": args.baseline_mb},
         {"defaults": ours, "embed_everything": before, "embed_everything_projected_s": round(projected),
          "speedup": round(ratio, 1)})


if __name__ == "__main__":
    main()
