"""`medloop eval`: compare targets, retrieval and stale-check quality, MCQ, loss, run curves."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from medloop.cli.common import _progress, console, eval_app, load_settings, out
from medloop.cli.knowledge import require_guidelines
from medloop.cli.serve import _parse_adapters, build_server


@eval_app.command("compare")
def eval_compare(
    target: Annotated[list[str], typer.Option(help="base | ADAPTER | ADAPTER+rag | LABEL=URL#MODEL (repeatable)")],
    base_model: Annotated[str, typer.Option(help="local base model for local targets")] = "",
    adapter: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a local adapter (repeatable)")] = None,
    questions: Annotated[Path | None, typer.Option(help="JSONL with 'question' (default: the report's 10)")] = None,
    max_tokens: Annotated[int, typer.Option()] = 256,
    out_dir: Annotated[Path, typer.Option("--out", help="report folder")] = Path("eval-report"),
) -> None:
    """Answer a question set with several targets; write Markdown and HTML (with charts) side by side."""

    from medloop.continual import evaluation
    from medloop.serving.live import LiveServer

    settings = load_settings()
    targets = [evaluation.parse_target(t) for t in target]
    qs = evaluation.load_questions(questions or evaluation.DEFAULT_QUESTIONS)
    local = [t for t in targets if t.url is None]
    with contextlib.ExitStack() as stack:
        local_url = None
        if local:
            model = base_model or settings.serving.base_model
            application = build_server(settings, engine="local", base_model=model,
                                       adapters=_parse_adapters(adapter or []), rag=any(t.rag for t in local))
            for t in local:
                if t.model == "base":
                    t.model = application.state.engine.adapters.base_name
            local_url = stack.enter_context(LiveServer(application)).url + "/v1"
        with _progress() as progress:
            task = progress.add_task("answering", total=len(targets) * len(qs))
            results = evaluation.compare(targets, qs, local_url=local_url, max_tokens=max_tokens,
                                         on_step=lambda: progress.advance(task))
    md, page = evaluation.write_report(results, qs, out_dir)
    table = Table()
    for col in ("target", "total_s", "mean_s", "total_tokens", "mean_tokens", "tokens_per_s", "errors"):
        table.add_column(col)
    for r in results:
        table.add_row(*(str(v) for v in r.summary.values()))
    out.print(table)
    out.print(f"report: {md}  {page}")


@eval_app.command("retrieval")
def eval_retrieval(
    file: Annotated[Path | None, typer.Argument(help="labelled JSONL (default: a packaged set, --set)")] = None,
    labelled: Annotated[Literal["dev", "heldout", "fresh"], typer.Option(
        "--set", help="the packaged set: dev (tuned on), heldout, fresh (written after the freeze)")] = "dev",
    k: Annotated[int, typer.Option("-k", help="evidence shown per answer")] = 3,
    calibrate: Annotated[bool, typer.Option("--calibrate",
                                            help="also suggest `retrieval.min_evidence` from this set")] = False,
    save: Annotated[Path | None, typer.Option("--json", help="write every figure and question here")] = None,
) -> None:
    """hit@1, hit@3, MRR, cited recall, false-cite rate and newest-version share on labelled questions."""
    from medloop.retrieval import Retriever, quality

    path = file or quality.sample_set(labelled)
    try:
        rows = quality.load_labelled(path)
    except (ValueError, OSError) as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e
    settings = load_settings()
    require_guidelines(settings)
    retriever = Retriever(settings)
    result = quality.retrieval_quality(retriever, rows, k)
    table = Table(title=f"{path.name}: {result['on_topic']} on-topic, {result['off_topic']} off-topic, k={k}")
    for col in ("figure", "value", "target"):
        table.add_column(col)
    for name in ("hit_at_1", "hit_at_3", "mrr", "cited_recall", "false_cite_rate", "newest_version_share"):
        op, goal = quality.TARGETS.get(name, ("", None))
        met = result["targets_met"].get(name)
        target = "" if goal is None else f"{op} {goal}  " + ("[green]met[/]" if met else "[red]missed[/]")
        table.add_row(name, f"{result[name]:.3f}", target)
    for kind, value in result["cited_recall_by_kind"].items():
        table.add_row(f"  cited_recall {kind}", f"{value:.3f}", "")
    out.print(table)
    for q in result["per_question"]:
        if q.get("cited_right") is False:
            console.print(f"[yellow]not cited[/] {q['question']}  (top {q['top']}, evidence {q['evidence']})")
        if q.get("false_cite"):
            console.print(f"[yellow]false cite[/] {q['question']}  (cited {q['cited']}, evidence {q['evidence']})")
    if calibrate:
        c = quality.calibrate(retriever, rows, k)
        out.print(f"calibrated retrieval.min_evidence {c.min_evidence} (any value in [{c.gap[0]}, {c.gap[1]}) gives "
                  f"cited recall {c.cited_recall:.3f} at false-cite rate {c.false_cite_rate:.3f}); now "
                  f"{retriever.settings.retrieval.min_evidence}")
    if save:
        save.write_text(json.dumps({"file": str(path), **result}, ensure_ascii=False, indent=2))


# quality.STALE_SETS, written out: typer reads the choices at import, and importing retrieval there costs every verb
StaleSet = Literal["dev", "heldout", "fresh", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7"]


@eval_app.command("stale")
def eval_stale(
    file: Annotated[Path | None, typer.Argument(help="labelled JSONL (default: a packaged set, --set)")] = None,
    labelled: Annotated[StaleSet, typer.Option(
        "--set", help="the packaged set: dev (tuned on), heldout, fresh to fresh7 (each written after the changes "
                      "the one before it moved; the last is reported, never tuned on)")] = "dev",
    save: Annotated[Path | None, typer.Option("--json", help="write every figure and answer here")] = None,
) -> None:
    """The stale-answer check on labelled answers: detection and false-flag rate, by language."""
    from medloop.knowledge import KnowledgeStore
    from medloop.retrieval import quality
    from medloop.retrieval.lexicon import lexicon

    settings = load_settings()
    require_guidelines(settings)
    path = file or quality.stale_set(labelled)
    with KnowledgeStore(settings.knowledge_db) as store:
        try:
            own = settings.retrieval.lexicon
            result = quality.stale_check_quality(store, path, lexicon(str(own) if own else None))
        except (ValueError, OSError) as e:
            console.print(f"[red]error[/] {e}")
            raise typer.Exit(2) from e
    table = Table(title=f"{path.name}: {result['stale_answers']} stale, {result['current_answers']} current answers")
    for col in ("", "detection", "false-flag rate"):
        table.add_column(col)
    for name, figures in {"all": result, **result["by_language"]}.items():
        table.add_row(name, str(figures["detection"]), str(figures["false_flag_rate"]))
    out.print(table)
    for a in result["per_answer"]:
        if not a["correct"]:
            console.print(f"wrong   line {a['line']}: expected {a['expected']}, flagged {a['flagged']}: "
                          f"{a['answer']}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    if save:
        save.write_text(json.dumps({"file": str(path), **result}, ensure_ascii=False, indent=2))


@eval_app.command("mcq")
def eval_mcq(
    file: Annotated[Path, typer.Argument(help="JSONL/CSV: MedQA, MedMCQA, CMMLU or medloop layout")],
    base_model: Annotated[str, typer.Option(help="path, hub id, .gguf (default: the served base model)")] = "",
    adapter: Annotated[Path | None, typer.Option()] = None,
    no_evidence: Annotated[bool, typer.Option("--no-evidence", help="skip the with-evidence pass")] = False,
    cop_base: Annotated[int | None, typer.Option(min=0, max=1, help="MedMCQA `cop`: 0- or 1-based (when the file "
                                                 "cannot show which)")] = None,
) -> None:
    """Multiple-choice accuracy by option log-likelihood, with and without evidence."""
    from medloop.continual.mcq import MCQFormatError, load_mcq, mcq_accuracy
    from medloop.models import load
    from medloop.retrieval import Retriever

    settings = load_settings()
    try:
        items = load_mcq(file, cop_base)  # format errors before any model loads
    except (MCQFormatError, OSError) as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e
    model, tokenizer = load(base_model or settings.serving.base_model, adapter)
    retriever = None if no_evidence else Retriever(settings)
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(items) * (1 if no_evidence else 2))
        result = mcq_accuracy(model, tokenizer, items, retriever, settings.serving.evidence_k,
                              on_item=lambda: progress.advance(task))
    for mode in ("no_evidence", "evidence"):
        if mode in result:
            r = result[mode]
            out.print(f"{mode:12s} accuracy {r['accuracy']:.3f} on {result['questions']} questions "
                      f"({r['seconds_per_item']:.2f} s per item)")


@eval_app.command("loss")
def eval_loss_cmd(
    adapter: Annotated[Path, typer.Argument(help="adapter folder (its medloop_run.json names the base model)")],
    data: Annotated[list[Path], typer.Argument(help="SFT files")],
    base_model: Annotated[str, typer.Option(help="override the base model")] = "",
) -> None:
    """Eval loss and perplexity of an adapter on SFT data."""
    from medloop.training.evaluate import eval_files

    run = adapter / "medloop_run.json"
    base = base_model or (json.loads(run.read_text())["base_model"] if run.exists() else "")
    if not base:
        raise typer.BadParameter("no medloop_run.json in the adapter folder: pass --base-model")
    result = eval_files(base, adapter, data)
    out.print(f"eval loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
              f"({result['samples']} samples, {result['tokens']} tokens, {result['dropped']} lines dropped)")


@eval_app.command("run")
def eval_run(run_dir: Annotated[Path, typer.Argument(help="a training run / adapter folder")]) -> None:
    """The run's loss curves as PNG, from its metrics.jsonl."""
    from medloop.training.components import plot_losses, read_metrics

    if not read_metrics(run_dir):
        console.print(f"[red]error[/] no metrics.jsonl in {run_dir}")
        raise typer.Exit(2)
    out.print(f"loss curves: {plot_losses(run_dir)}")
