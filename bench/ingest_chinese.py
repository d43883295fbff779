"""Ingesting a large Chinese guideline file, side by side in one run: the multilingual default (USE v3 embeds every
chunk) and the English embedder (the default before: it does not read Chinese, so Chinese chunks go to BM25 and
the lexicon only, at parsing speed).

Then the end-to-end search latency on each index (Chinese questions: lexicon, dictionary, BM25 top-k without a
full sort, the dense search where the embedder reads Chinese, relevance, records). The file is the sample Chinese
guidelines' sentences, replicated and varied (each copy numbered and its sentences reordered) to the requested
size. Saves bench/results/ingest_chinese.json.

    python bench/ingest_chinese.py --mb 50
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


def ingest(megabytes: float, embedder: str) -> dict:
    from medloop.config import Settings
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import load_embedder, sync_index

    home = Path(tempfile.mkdtemp(prefix="medloop-zh-"))
    os.environ["MEDLOOP_HOME"] = str(home)
    # one file, larger than a user's default
    settings = Settings(retrieval={"embedder": embedder}, files={"max_file_mb": megabytes + 1})
    path = home / "guide.md"
    path.write_text(chinese_text(megabytes), encoding="utf-8")
    model = load_embedder(settings.retrieval.embedder)
    start = time.perf_counter()
    with KnowledgeStore(settings.knowledge_db) as store:
        ingested(ingest_paths(store, [path], limits=settings.files))
        parsed = time.perf_counter() - start
        result = sync_index(settings, store, embedder=model)
        seconds = time.perf_counter() - start
        query = query_latency(settings, store, model)
    shutil.rmtree(home, ignore_errors=True)
    return {"embedder": embedder, "mb": megabytes, "chunks": result.total, "seconds": round(seconds, 1),
            "parse_store_s": round(parsed, 1), "chunks_per_s": round(result.total / seconds, 1), "query": query}


def main() -> None:
    from medloop.config import ENGLISH_EMBEDDER, MULTILINGUAL_EMBEDDER

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=50)
    args = parser.parse_args()
    sides = {}
    for side, embedder in (("multilingual", MULTILINGUAL_EMBEDDER), ("english", ENGLISH_EMBEDDER)):
        run = sides[side] = ingest(args.mb, embedder)
        print(f"{side} ({embedder}): {run['mb']} MB, {run['chunks']} chunks in {run['seconds']} s "
              f"({run['chunks_per_s']} chunks/s); Chinese search p50 {run['query']['p50_ms']} ms, "
              f"p99 {run['query']['p99_ms']} ms")
    ratio = sides["multilingual"]["seconds"] / sides["english"]["seconds"]
    print(f"the multilingual default ingests in {ratio:.1f}x the time of the English embedder")
    save("ingest_chinese", {"mb": args.mb}, {**sides, "multilingual_over_english": round(ratio, 2)})


if __name__ == "__main__":
    main()
