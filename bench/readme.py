"""Write the README's generated figures from bench/results/*.json, between `<!-- figures:NAME -->` and
`<!-- /figures:NAME -->` markers, so every figure there traces to a saved run.

    python bench/readme.py          # rewrite README.md in place
    python bench/readme.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def retrieval_quality() -> str:
    dev, held = load("retrieval_quality-dev"), load("retrieval_quality-heldout")
    names = ("hit_at_1", "hit_at_3", "mrr", "cited_recall", "false_cite_rate", "newest_version_share")
    rows = [f"| {n} | {dev[n]:.3f} | {held[n]:.3f} |" for n in names]
    return "\n".join(["| figure (k=3) | dev set | held-out set |", "|---|---|---|", *rows,
                      f"\n`min_relevance` {dev['min_relevance']}, `min_cosine` {dev['min_cosine']}."])


def search() -> str:
    f = load("search")["figures"]
    return "\n".join([
        "| question | sentence-transformers | exported ONNX encoder | speed-up |", "|---|---|---|---|",
        *(f"| {lang} | {f[f'sentence-transformers/{lang}']['median_s']:.2f} s | {f[f'onnx/{lang}']['median_s']:.2f} s "
          f"| {f[f'speedup/{lang}']:.2f}x |" for lang in ("zh", "en"))])


def ingest_chinese() -> str:
    f = load("ingest_chinese")["figures"]
    ours, before = f["defaults"], f["embed_everything"]
    projected_min = f["embed_everything_projected_s"] / 60
    return (f"{ours['mb']:.0f} MB of Chinese guideline text ({ours['chunks']} chunks): "
            f"**{ours['seconds']:.0f} s** with the defaults ({ours['chunks_per_s']:.0f} chunks/s) against "
            f"~{projected_min:.0f} min embedding every chunk ({before['chunks_per_s']:.1f} chunks/s measured on "
            f"{before['mb']} MB): {f['speedup']:.0f}x. Searching that index with Chinese questions (lexicon, BM25 "
            f"top-k, relevance): p50 **{ours['query']['p50_ms']} ms**, p99 {ours['query']['p99_ms']} ms.")


def retrieval_scale() -> str:
    run = load("retrieval")
    f, nprobe = run["figures"], run["settings"]["ivf_nprobe"]
    sizes = [str(n) for n in run["settings"]["sizes"]]
    lines = ["| figure | " + " | ".join(f"{int(n):,} chunks" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]

    def row(name, cell):
        lines.append(f"| {name} | " + " | ".join(cell(f[n]) for n in sizes) + " |")

    def recall(r, key):
        return "1 (exact)" if isinstance(r["recall"], str) else f"{r['recall'][f'nprobe={nprobe}'][key]:.3f}"

    row("dense index", lambda r: r["dense_index"])
    for lang in ("english", "chinese"):
        row(f"{lang.title()} question, end to end: p50 / p99",
            lambda r, lang=lang: f"**{r[lang]['p50_ms']} ms** / {r[lang]['p99_ms']} ms")
    row(f"recall@10 vs exact: dense (nprobe {nprobe})", lambda r: recall(r, "dense_recall_at_10"))
    row("recall@10 vs exact: the whole hybrid", lambda r: recall(r, "hybrid_recall_at_10"))
    row("add one guideline (ingest + new segment)", lambda r: f"**{r['add_one_document']['add_s']} s**")
    row("rewrite the whole index (before segments)", lambda r: f"{r['add_one_document']['rewrite_all_s']} s")
    row("build from staged vectors (tokenise, postings, FAISS)", lambda r: f"{r['index_from_staged_vectors_s']} s")
    return "\n".join(lines) + (f"\n\nBase texts embedded at {f['embedding_chunks_per_s']} chunks/s; a reordered "
                               f"variant sits at cosine {f['variant_cosine']} to its base.")


def training() -> str:
    run = load("training")
    f, st = run["figures"], run["settings"]
    names = {"seed": "seed's way: HF Trainer, padded to max_length", "trl": "TRL SFTTrainer, dynamic padding",
             "recipe": f"`medloop train --preset {st['preset']}`"}
    lines = [f"{st['model']}, {'QLoRA' if st['quantize'] else 'LoRA'} r{st['lora_r']}, effective batch "
             f"{st['effective_batch']} (micro {st['micro_batch']}), max_length {st['max_length']}, {st['samples']} "
             f"samples of rendered length p10/p50/p90 {'/'.join(map(str, st['lengths_p10_p50_p90']))}:", "",
             "| side | samples/s | trained tokens/s | peak memory |", "|---|---|---|---|"]
    lines += [f"| {names[k]} | {f[k]['samples_per_s']:.2f} | {f[k]['trained_tokens_per_s']:.0f} | "
              f"{f[k]['peak_memory_mb'] / 1024:.1f} GB |" for k in ("seed", "trl", "recipe") if k in f]
    return "\n".join(lines) + (f"\n\nRecipe vs the seed's way **{f['recipe_vs_seed']}x**, vs TRL with dynamic padding "
                               f"**{f['recipe_vs_trl']}x** samples/s.")


def serving() -> str:
    f = load("serving")["figures"]
    lines = ["| clients | local engine | pipeline per request | pipeline, batch_size = clients |", "|---|---|---|---|"]
    for n in (1, 8):
        r = f[f"{n}_clients"]
        lines.append(f"| {n} | **{r['local_engine_tok_s']} tok/s** | {r['pipeline_per_request_tok_s']} tok/s "
                     f"({r['vs_per_request']}x) | {r['pipeline_batch_size_tok_s']} tok/s ({r['vs_batch_size']}x) |")
    g = f["gateway_p50_ms"]
    return "\n".join(lines) + (f"\n\nGateway with evidence p50 {g['via']} ms vs the engine direct {g['direct']} ms "
                               f"({100 * f['gateway_overhead']:+.1f}%; the grounded prompt direct {g['grounded']} ms).")


def sabotage() -> str:
    from medloop.continual.gate import ORDER

    run = load("sabotage_gate")
    train = run["settings"]["train"]
    lines = [f"SmolLM2-135M-Instruct, LoRA r{train['lora_r']}, lr {train['learning_rate']}, {train['epochs']} epochs, "
             f"replay {run['settings']['replay_fraction']}; every figure is candidate vs live:", "",
             "| month | outcome | decided by | new-data loss | in domain | evidence agreement | regression loss | MCQ "
             "| fact recall |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in run["figures"].items():
        cells = []
        for signal in ORDER:
            v = r["signals"].get(signal, {})
            if v.get("candidate") is None:
                cells.append("-")
                continue
            if v.get("live") is None:  # a property of the month's data, the same for both adapters
                cells.append(f"{v['candidate']:.2f}" + ("" if v["passed"] is not False else " ✗"))
                continue
            mark = "" if v["passed"] is not False else " ✗"
            cells.append(f"{v['candidate']:.3f} vs {v['live']:.3f}{mark}")
        lines.append(f"| {name} | {r['outcome']} | {r['decided_by']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def month_report(month: str, r: dict) -> str:
    """One month of the loop as `examples/loop_demo.py` prints it: the decision, then every signal."""
    lines = [f"{month}: {r['outcome']} ({r['version']}), decided by {r['decided_by']}, gate {r['seconds']} s, "
             f"{'4-bit' if r['quantized'] else 'full precision'}",
             "| signal | candidate | live | n | passed | why |", "|---|---|---|---|---|---|"]
    for name, s in r["signals"].items():
        cand, live = (f"{v:.4f}" if isinstance(v, float) else "-" for v in (s["candidate"], s["live"]))
        lines.append(f"| {name} | {cand} | {live} | {s['n']} | {s['passed']} | {s['why']} |")
    return "\n".join(lines)


def gate_speed() -> str:
    f = load("gate")["figures"]
    one, batched = f["one_at_a_time"], f["batched"]
    return (f"Fact check on SmolLM2-135M, {f['items']} questions with evidence ({f['prompt_tokens_mean']:.0f} prompt "
            f"tokens on average), 2 CPU cores: one answer at a time {one['seconds_per_item']:.2f} s a question, "
            f"batches of {batched['batch_size']} {batched['seconds_per_item']:.2f} s (**{f['speedup']}x**); "
            f"{f['same_answers']} of {f['items']} answers the same.")


def loop_report() -> str:
    run = load("loop_demo")
    return "```\n" + "\n\n".join(month_report(m, r) for m, r in run["figures"].items()) + "\n```"


SECTIONS = {"sabotage": sabotage, "loop-report": loop_report, "gate-speed": gate_speed,
            "retrieval-quality": retrieval_quality, "search": search, "ingest-chinese": ingest_chinese,
            "retrieval-scale": retrieval_scale, "training": training, "serving": serving}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        # A section inside a list item is indented like its markers.
        pattern = re.compile(rf"^([ \t]*)(<!-- figures:{name} -->\n).*?^\1(<!-- /figures:{name} -->)", re.S | re.M)
        text = pattern.sub(lambda m, make=make: m[1] + m[2] + textwrap.indent(make() + "\n", m[1]) + m[1] + m[3],
                           text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    old = readme.read_text(encoding="utf-8")
    new = render(old)
    if args.check:
        sys.exit(0 if new == old else 1)
    readme.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
