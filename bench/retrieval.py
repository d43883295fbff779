"""Retrieval benchmark (not a test): ingestion throughput, query latency, approximate-index recall.

    .venv/bin/python bench/retrieval.py              # 100k synthetic chunks
    .venv/bin/python bench/retrieval.py --n 1000000  # 1M (hours on a laptop CPU: the embedder dominates)

Prints: ingestion throughput as a ratio to raw SentenceTransformer.encode on the same texts (target
>= 0.9), hybrid query latency p50/p99, and recall@10 of HNSW and IVF against exact (flat) search.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from medloop.config import Settings  # noqa: E402
from medloop.continual.loop import ingest_and_index  # noqa: E402
from medloop.retrieval import Retriever, load_embedder  # noqa: E402
from medloop.retrieval.index import build_dense, chunk_index_text, load_index  # noqa: E402

EN = ("hypertension diabetes insulin metformin statin aspirin stroke asthma pneumonia influenza kidney heart "
      "failure dose daily target blood pressure glucose therapy first-line adults children elderly pregnancy "
      "monitoring screening risk lifestyle exercise diet sodium weight").split()
ZH = ("高血压 糖尿病 胰岛素 二甲双胍 他汀 阿司匹林 卒中 哮喘 肺炎 流感 肾病 心衰 剂量 目标 血压 血糖 治疗 "
      "一线 成人 儿童 老年 妊娠 监测 筛查 风险 生活方式 运动 饮食 钠盐 体重").split()


def synthetic_docs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 2:
            text = "".join(rng.choice(ZH) for _ in range(25)) + "。"
        else:
            text = " ".join(rng.choice(EN) for _ in range(40)) + "."
        docs.append({"id": f"g{i}", "title": f"Guideline {i % 997}", "version": "1", "text": text})
    return docs


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="medloop-bench-"))
    settings = Settings(home=home)
    docs = synthetic_docs(args.n)
    corpus = home / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs))
    embedder = load_embedder(settings.embedder)
    embedder.encode(["warm up"] * 64)

    # Baseline: raw encode of exactly the texts the pipeline embeds.
    texts = [chunk_index_text(d["title"], "", d["text"]) for d in docs]
    t0 = time.perf_counter()
    embedder.encode(texts, batch_size=64, normalize_embeddings=True)
    raw_s = time.perf_counter() - t0

    import medloop.retrieval.index as index_mod

    index_mod.load_embedder = lambda name: embedder  # same loaded model for both sides
    t0 = time.perf_counter()
    report, synced = ingest_and_index(settings, [corpus])
    pipeline_s = time.perf_counter() - t0
    assert synced.total == args.n, synced

    retriever = Retriever(settings, embedder=embedder)
    rng = random.Random(1)
    queries = [" ".join(rng.choice(EN) for _ in range(5)) if i % 2 else "".join(rng.choice(ZH) for _ in range(4))
               for i in range(args.queries)]
    latencies = []
    for q in queries:
        t0 = time.perf_counter()
        retriever.search(q, k=5)
        latencies.append(time.perf_counter() - t0)

    index = load_index(settings.index_dir)
    qvecs = embedder.encode(queries, normalize_embeddings=True).astype(np.float32)
    _, exact = index.dense.search(qvecs, 10)
    recalls = {}
    for kind in ("hnsw", "ivf"):
        # nlist so that IVF really trains (FAISS wants ~39 points per list); flat is the fallback below that
        s = Settings(home=home, index_type=kind, ivf_nlist=max(1, min(int(4 * np.sqrt(args.n)), args.n // 64)))
        t0 = time.perf_counter()
        approx_index = build_dense(index.embeddings, index.ids, s)
        build_s = time.perf_counter() - t0
        _, approx = approx_index.search(qvecs, 10)
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
        inner = faiss.downcast_index(approx_index.index)
        what = {"hnsw": f"HNSW M={s.hnsw_m} efSearch={s.hnsw_ef_search}",
                "ivf": f"IVF nlist={getattr(inner, 'nlist', '-')} nprobe={s.ivf_nprobe}"}[kind]
        recalls[what] = (recall, build_s)

    print(f"chunks: {args.n}  (faiss {faiss.__version__}, {os.cpu_count()} cores)")
    print(f"ingestion: pipeline {args.n / pipeline_s:.0f} chunks/s vs raw encode {args.n / raw_s:.0f} chunks/s"
          f"  -> ratio {raw_s / pipeline_s:.2f} (target >= 0.9)")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"hybrid query latency (flat): p50 {p50:.1f} ms  p99 {p99:.1f} ms")
    for kind, (recall, build_s) in recalls.items():
        print(f"{kind}: recall@10 vs exact {recall:.3f}  (build {build_s:.1f} s)")


if __name__ == "__main__":
    main()
