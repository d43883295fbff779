"""Retrieval at scale (not a test): indexes of 100k and 1M chunks side by side in one run, on 2 CPU cores.

Per size: the end-to-end hybrid query (question embedding with the exported ONNX encoder, dense search,
BM25 top-k, fusion, relevance gate, records) p50/p99 for English and Chinese questions; recall@10 of the
approximate dense index and of the whole hybrid against the same search with an exact index; and adding one
new guideline (ten chunks) to the live index (the segment way) against rewriting the whole index from the
vectors it already has (what every ingest did before segments: `compact_index` does exactly that).

The corpus is the repo's real guideline text replicated and varied: each chunk is 3-5 sentences drawn from the
sample guidelines, the labelled questions and the MCQ items (English; one chunk in five Chinese, which the
English-only embedder does not embed), in a shuffled order, numbered. Embedding a million chunks takes hours
on 2 cores, so `--unique` base texts are embedded for real and each chunk's vector is its base text's vector
plus Gaussian noise scaled to the cosine measured between a base text and its reordered variants (both
embedded). The store holds every chunk's text; the vectors enter through the ingest's resume path (staged, as
an interrupted ingest leaves them), so the index is built by the real `sync_index`.
Saves bench/results/retrieval.json.

    python bench/retrieval.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medloop.config import Settings  # noqa: E402
from medloop.knowledge import KnowledgeStore  # noqa: E402
from medloop.knowledge.chunking import Chunk  # noqa: E402
from medloop.knowledge.language import is_chinese  # noqa: E402
from medloop.knowledge.parsing import Document  # noqa: E402
from medloop.resources import DATA  # noqa: E402
from medloop.retrieval import Retriever, load_embedder, sync_index  # noqa: E402
from medloop.retrieval import index as index_mod  # noqa: E402
from medloop.retrieval.dense import IndexParams  # noqa: E402
from medloop.retrieval.index import compact_index, ensure_query_encoder  # noqa: E402
from medloop.retrieval.segments import load_index  # noqa: E402
from results import ingested, save  # noqa: E402

CHUNKS_PER_DOC = 500


def real_sentences() -> tuple[list[str], list[str]]:
    """(English, Chinese) sentences of the repo's guidelines, labelled questions and MCQ items."""
    found = []
    for f in sorted(DATA.joinpath("guidelines").iterdir()):
        body = f.read_text("utf-8").split("---", 2)[2]
        found += [s.strip() for s in re.split(r"(?<=[。；.;])\s*", body) if s.strip() and not s.startswith("#")]
    for name in ("retrieval_dev.jsonl", "retrieval_heldout.jsonl", "guideline_mcq.jsonl", "mcq_sample.jsonl"):
        for line in DATA.joinpath(name).read_text("utf-8").splitlines():
            row = json.loads(line)
            found.append(row["question"])
            found += [f"{row['question']} {text}" for text in row.get("options", {}).values()][:1]
    english = sorted({s for s in found if not is_chinese(s)})
    chinese = sorted({s for s in found if is_chinese(s)})
    return english, chinese


def base_texts(unique: int, rng: random.Random) -> tuple[list[str], list[str]]:
    english, chinese = real_sentences()
    en = [" ".join(rng.sample(english, rng.randint(3, 5))) for _ in range(unique)]
    zh = ["".join(rng.sample(chinese, rng.randint(3, 5))) for _ in range(unique)]
    return en, zh


def variant(text: str, i: int, rng: random.Random) -> str:
    parts = re.split(r"(?<=[。；.;?？])\s*", text)
    rng.shuffle(parts)
    return (" " if not is_chinese(text) else "").join(p for p in parts if p) + f" ({i})"


def noise_scale(embedder, texts: list[str], rng: random.Random) -> tuple[float, float]:
    """sigma such that normalise(v + sigma*g) sits at the cosine a reordered variant has to its base."""
    sample = texts[:200]
    base = embedder.encode(sample, normalize_embeddings=True, convert_to_numpy=True)
    varied = embedder.encode([variant(t, 0, rng) for t in sample], normalize_embeddings=True, convert_to_numpy=True)
    cosine = float(np.mean(np.sum(base * varied, axis=1)))
    return float(np.sqrt((1 / cosine**2 - 1) / base.shape[1])), cosine


def build(settings: Settings, size: int, en: list[str], zh: list[str], vectors: np.ndarray, sigma: float,
          embedder, rng: random.Random) -> dict:
    """Store `size` chunks; stage the English ones' vectors; let sync_index build the index."""
    store = KnowledgeStore(settings.knowledge_db)
    noise = np.random.default_rng(1)
    bases, t0 = [], time.perf_counter()
    for d in range(0, size, CHUNKS_PER_DOC):
        chunks = []
        for i in range(d, min(size, d + CHUNKS_PER_DOC)):
            chinese = i % 5 == 0
            b = rng.randrange(len(zh if chinese else en))
            bases.append(-1 if chinese else b)
            chunks.append(Chunk(section=f"section {i % 40}", text=variant((zh if chinese else en)[b], i, rng)))
        doc = Document(id=f"bench-{d}", title=f"Compiled guideline {d // CHUNKS_PER_DOC}", version="1", text="",
                       source="bench", published="2025-01-01", language="en")
        store.upsert_many([(doc, chunks)])
    stored_s = time.perf_counter() - t0
    ids = store.chunk_ids()
    bases = np.array(bases)
    signature = index_mod._signature(IndexParams.of(settings))
    staging = index_mod._Staging(settings.index_dir / ".staging", signature)
    english = np.flatnonzero(bases >= 0)
    for start in range(0, len(english), 100_000):
        rows = english[start : start + 100_000]
        v = vectors[bases[rows]] + sigma * noise.standard_normal((len(rows), vectors.shape[1]), dtype=np.float32)
        staging.keep(ids[rows].tolist(), v / np.linalg.norm(v, axis=1, keepdims=True))
    t0 = time.perf_counter()
    result = sync_index(settings, store, embedder=embedder)
    build_s = time.perf_counter() - t0
    assert result.total == size, result
    ensure_query_encoder(settings, embedder)
    return {"chunks": size, "store_s": round(stored_s, 1), "index_from_staged_vectors_s": round(build_s, 1)}


def questions() -> tuple[list[str], list[str]]:
    rows = [json.loads(x) for x in DATA.joinpath("retrieval_dev.jsonl").read_text("utf-8").splitlines()]
    qs = [r["question"] for r in rows]
    return [q for q in qs if not is_chinese(q)], [q for q in qs if is_chinese(q)]


def latency(retriever: Retriever, qs: list[str], rounds: int) -> dict:
    """End-to-end `search` p50/p99 over `rounds` passes of the questions, after one pass that loads the index."""
    for q in qs:
        retriever.search(q, 3)
    times = []
    for _ in range(rounds):
        for q in qs:
            t0 = time.perf_counter()
            retriever.search(q, 3)
            times.append(time.perf_counter() - t0)
    return {"queries": len(times), "p50_ms": round(1000 * float(np.percentile(times, 50)), 1),
            "p99_ms": round(1000 * float(np.percentile(times, 99)), 1)}


def exact_twin(segment) -> faiss.Index:
    """A flat (exact) index over the same vectors and ids as the segment's."""
    vectors = np.asarray(segment.embeddings())
    keep = np.linalg.norm(vectors, axis=1) > 0
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    exact.add_with_ids(np.ascontiguousarray(vectors[keep]), segment.ids[keep])
    return exact


def overlap(found: list[set], truth: list[set]) -> float:
    return float(np.mean([len(a & t) / max(len(t), 1) for a, t in zip(found, truth, strict=True)]))


def recall(settings: Settings, retriever: Retriever, qs: list[str], nprobes: list[int]) -> dict:
    """recall@10 of the dense index and of the whole hybrid (top 10 of search) against exact dense search."""
    index = retriever.index()
    qvecs = retriever.embedder.encode(qs, normalize_embeddings=True).astype(np.float32)
    approximate = {s.name: s.dense for s in index.segments}
    exact = {s.name: exact_twin(s) for s in index.segments}

    def run(dense: dict) -> tuple[list[set], list[set]]:
        for s in index.segments:
            s.dense = dense[s.name]  # the cached attribute: searches use it
        top_dense = [set(index.dense_search(q[None], 10)) for q in qvecs]
        top_hybrid = [{h.chunk.chunk_id for h in retriever.search(q, 10)} for q in qs]
        return top_dense, top_hybrid

    truth_dense, truth_hybrid = run(exact)
    found = {}
    for nprobe in nprobes:
        settings.index.ivf_nprobe = nprobe
        for s in index.segments:
            s.tune(settings)
        dense, hybrid = run(approximate)
        found[f"nprobe={nprobe}"] = {"dense_recall_at_10": round(overlap(dense, truth_dense), 3),
                                     "hybrid_recall_at_10": round(overlap(hybrid, truth_hybrid), 3)}
    run(approximate)
    return found


def add_one_document(settings: Settings, embedder, rng: random.Random, en: list[str]) -> dict:
    """A new guideline of ten chunks, added to the live index (new segment) vs the whole index rewritten; added with
    the embedder already loaded (the scheduler keeps it) and end to end as `medloop ingest` runs it (the exported
    encoder loaded first)."""
    from medloop.retrieval.ingest import ingest_and_index

    def guideline(n: int) -> Path:
        body = "\n\n".join(f"## Recommendation {i}\n{variant(rng.choice(en), i, rng)} Tirzepatide {i} mg weekly."
                           for i in range(10))
        path = settings.home / f"new-guideline-{n}.md"
        path.write_text(f"---\nid: new-guideline-{n}\ntitle: New guideline\nversion: '2026'\nissuer: bench\n"
                        f"published: 2026-01-01\nlanguage: en\n---\n# New guideline\n\n{body}\n")
        return path

    t0 = time.perf_counter()
    report, synced = ingest_and_index(settings, [guideline(1)], embedder=embedder)
    ingested(report, synced)
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ingested(*ingest_and_index(settings, [guideline(2)]))
    end_to_end_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compacted = compact_index(settings)
    rewrite_s = time.perf_counter() - t0
    return {"added_chunks": synced.added, "add_s": round(add_s, 2), "add_end_to_end_s": round(end_to_end_s, 2),
            "segments_after_add": compacted.merged, "rewrite_all_s": round(rewrite_s, 1),
            "speedup": round(rewrite_s / add_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--unique", type=int, default=4000, help="base texts embedded for real")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    args = parser.parse_args()

    rng = random.Random(0)
    embedder = load_embedder(Settings().retrieval.embedder)
    en, zh = base_texts(args.unique, rng)
    t0 = time.perf_counter()
    vectors = embedder.encode(en, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    embed_rate = len(en) / (time.perf_counter() - t0)
    sigma, cosine = noise_scale(embedder, en, rng)
    print(f"embedded {len(en)} base texts at {embed_rate:.0f} chunks/s; variant cosine {cosine:.3f}, sigma {sigma:.4f}")
    en_qs, zh_qs = questions()
    recall_qs = en_qs + [variant(t, 0, rng) for t in rng.sample(en, 67)]
    figures = {"embedding_chunks_per_s": round(embed_rate, 1), "variant_cosine": round(cosine, 3)}
    for size in args.sizes:
        home = Path(tempfile.mkdtemp(prefix=f"medloop-scale-{size}-"))
        settings = Settings(home=home)
        built = build(settings, size, en, zh, vectors, sigma, embedder, rng)
        retriever = Retriever(settings)
        row = {**built, "segments": len(load_index(settings.index_dir, lazy=True).segments),
               "dense_index": type(faiss.downcast_index(retriever.index().segments[0].dense.index)).__name__,
               "english": latency(retriever, en_qs, args.rounds), "chinese": latency(retriever, zh_qs, args.rounds)}
        row["recall"] = recall(settings, retriever, recall_qs, args.nprobe) if row["dense_index"] != "IndexFlatIP" \
            else "exact (flat)"
        settings.index.ivf_nprobe = Settings().index.ivf_nprobe
        row["add_one_document"] = add_one_document(settings, embedder, rng, en)
        figures[str(size)] = row
        print(json.dumps({size: row}, indent=1))
    save("retrieval", {"sizes": args.sizes, "unique": args.unique, "rounds": args.rounds,
                       "index_type": Settings().index.type, "ivf_nprobe": Settings().index.ivf_nprobe}, figures)


if __name__ == "__main__":
    main()
