"""`medloop`: one verb per stage of the life cycle, each a thin shell over one function of its room."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import types
import typing
from pathlib import Path
from typing import Annotated

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medloop.config import Settings
from medloop.errors import UserError
from medloop.training.config import TrainConfig

app = typer.Typer(help="Keep a Qwen3 medical assistant current.", no_args_is_help=True, add_completion=False)
index_app = typer.Typer(help="The retrieval index.", no_args_is_help=True)
app.add_typer(index_app, name="index")
scheduler_app = typer.Typer(help="The continual loop's scheduler service.", no_args_is_help=True)
app.add_typer(scheduler_app, name="scheduler")
adapters_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
eval_app = typer.Typer(help="Evaluation and comparison reports.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
train_app = typer.Typer(help="QLoRA fine-tuning.", invoke_without_command=True)
app.add_typer(train_app, name="train")
console = Console(stderr=True)
out = Console()
THIRD_PARTY_LOGGERS = ("bitsandbytes", "transformers", "sentence_transformers", "peft", "accelerate", "jieba")


@app.callback()
def options(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show third-party warnings and progress "
                                                "bars (model loading, kernels)")] = False) -> None:
    """Keep a Qwen3 medical assistant current."""
    if verbose:
        return
    # Before any model library is imported: their import-time warnings and weight-loading bars are noise in
    # normal output (medloop's own progress bars stay).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def run_ingest(settings: Settings, paths: list[Path], recursive: bool, quiet: bool = False):
    """Ingest with progress bars: files, then embedding of the new chunks."""
    from medloop.retrieval.ingest import ingest_and_index

    with _progress() as progress:
        files = progress.add_task("ingest", total=None, visible=not quiet)
        embed = progress.add_task("index", total=None, visible=not quiet)
        return ingest_and_index(
            settings, paths, recursive=recursive, wait_s=settings.ingest_wait_s,
            on_start=lambda n: progress.update(files, total=n),
            on_file=lambda r: progress.advance(files),
            on_progress=lambda done, total: progress.update(embed, completed=done, total=total),
        )


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="guideline files or folders (md, txt, html, pdf, jsonl)")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="descend into sub-folders")] = False,
) -> None:
    """Ingest guideline files: parse, chunk, version (newest wins) and index them."""
    from medloop.knowledge.ingest import FileOutcome
    from medloop.retrieval.index import ensure_query_encoder

    settings = Settings()
    report, synced = run_ingest(settings, paths, recursive)
    if synced.total:
        try:  # once per embedder: `medloop search` then starts in about a second; optional, so never fatal
            ensure_query_encoder(settings)
        except Exception as e:  # noqa: BLE001 - the ingest itself succeeded
            console.print(f"[yellow]warning[/] the fast question encoder was not exported ({type(e).__name__}: "
                          f"{e}); `medloop search` loads the embedder instead")
    for f in report.files:
        for w in f.warnings:
            console.print(f"warning {f.path}: {w}", markup=False, highlight=False, style="yellow", soft_wrap=True)
        for n in f.notes:
            console.print(f"note    {f.path}: {n}", markup=False, highlight=False, soft_wrap=True)
        if f.outcome == FileOutcome.FAILED:  # one line per file, whatever the width: easy to grep
            console.print(f"failed  {f.path}: {f.error}", markup=False, highlight=False, style="red", soft_wrap=True)
    table = Table(title="ingest summary")
    for col in ("added", "updated", "superseded", "unchanged", "failed"):
        table.add_column(col, justify="right")
    table.add_row(*(str(report.counts[c]) for c in ("added", "updated", "superseded", "unchanged", "failed")))
    out.print(table)
    out.print(f"index v{synced.version}: {synced.total} chunks (+{synced.added} -{synced.removed})")
    raise typer.Exit(1 if report.failed else 0)


@app.command()
def search(
    question: str,
    k: Annotated[int, typer.Option("-k", help="how many chunks")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    include_superseded: Annotated[bool, typer.Option("--include-superseded", help="older versions too")] = False,
) -> None:
    """Search the guideline index."""
    from medloop.retrieval import Retriever

    hits = Retriever(Settings()).search(question, k, include_superseded=include_superseded)
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
        return
    if not hits:
        console.print("no results (is the index empty? run `medloop ingest` first)")
        raise typer.Exit(0)
    table = Table(show_lines=True)
    for col in ("#", "guideline", "issuer", "version", "date", "section", "score", "text"):
        table.add_column(col, overflow="fold")
    for i, h in enumerate(hits, 1):
        c = h.chunk
        mark = f" ({h.relevance:.2f})" if h.relevant else f" (weak {h.relevance:.2f})"
        table.add_row(str(i), c.title + (" [superseded]" if c.superseded else ""), c.issuer, c.version,
                      c.published, c.section, f"{h.score:.4f}{mark}", c.text[:200])
    out.print(table)


@index_app.command("rebuild")
def index_rebuild() -> None:
    """Re-embed every chunk and write a fresh index version (after changing the embedder or index type)."""
    from medloop.knowledge import KnowledgeStore
    from medloop.retrieval import load_embedder, sync_index
    from medloop.retrieval.index import ensure_query_encoder

    settings = Settings()
    embedder = load_embedder(settings.embedder)
    with _progress() as progress:
        task = progress.add_task("embed", total=None)
        with KnowledgeStore(settings.knowledge_db) as store:
            result = sync_index(settings, store, embedder=embedder, rebuild=True,
                                on_progress=lambda d, t: progress.update(task, completed=d, total=t))
    ensure_query_encoder(settings, embedder, force=True)
    out.print(f"index v{result.version}: {result.total} chunks")


@index_app.command("compact")
def index_compact() -> None:
    """Merge the index's segments into one, without removed chunks (nothing is re-embedded)."""
    from medloop.retrieval.index import compact_index

    settings = Settings()
    try:
        result = compact_index(settings)
    except FileNotFoundError as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(1) from None
    done = f"{result.merged} merged" if result.changed else "it was one already"
    out.print(f"index v{result.version}: {result.total} chunks in one segment ({done})")


@index_app.command("status")
def index_status() -> None:
    """Index version, size and whether it is behind the store."""
    from medloop.knowledge import KnowledgeStore
    from medloop.retrieval.index import read_meta

    settings = Settings()
    meta = read_meta(settings.index_dir)
    if meta is None:
        out.print("no index yet: run `medloop ingest`")
        return
    with KnowledgeStore(settings.knowledge_db) as store:
        behind = store.revision() != meta["store_revision"]
    out.print_json(json.dumps({**meta, "behind_store": behind}, ensure_ascii=False))


SAMPLE_GUIDELINES = Path(__file__).parent / "data" / "guidelines"


def _parse_adapters(values: list[str]) -> dict[str, str]:
    adapters = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--adapter takes NAME=PATH, got '{v}'")
        adapters[name] = path
    return adapters


def build_server(settings: Settings, **kwargs):
    """The server `medloop serve` runs, with the registry's live adapter served under its stable name."""
    from medloop.continual.registry import served_live
    from medloop.serving.server import build_server as build

    adapters, status = served_live(settings.adapters_dir, settings.served_adapter_name, kwargs.pop("adapters", {}))
    return build(settings, adapters=adapters, registry_status=status, **kwargs)


@app.command()
def serve(
    engine: Annotated[str, typer.Option(help="local (transformers+peft) or vllm")] = "",
    base_model: Annotated[str, typer.Option(help="path, hub id or .gguf file")] = "",
    adapter: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a LoRA adapter (repeatable)")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    vllm_url: Annotated[str, typer.Option(help="a running `vllm serve --enable-lora` upstream")] = "",
    launch: Annotated[bool, typer.Option("--launch", help="start vLLM with the right flags")] = False,
    no_rag: Annotated[bool, typer.Option("--no-rag", help="serve without guideline evidence")] = False,
    demo: Annotated[bool, typer.Option("--demo", help="ingest the sample guidelines if the index is empty")] = False,
) -> None:
    """Serve the OpenAI-compatible chat API with guideline evidence (`--port 0`: a free port, printed)."""
    import socket

    from medloop.retrieval.index import current_version
    from medloop.serving.server import serve as serve_app

    settings = Settings()
    if demo and current_version(settings.index_dir) is None:
        console.print(f"demo: ingesting the sample guidelines into {settings.home}")
        run_ingest(settings, [SAMPLE_GUIDELINES], recursive=False, quiet=True)
    if not settings.api_keys and host not in {"127.0.0.1", "localhost", "::1"}:
        console.print(f"[yellow]no API key configured (MEDLOOP_API_KEYS): binding to 127.0.0.1, not {host}[/]")
        host = "127.0.0.1"
    elif not settings.api_keys:
        console.print("[yellow]no API key configured: serving on loopback only[/]")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    port = listener.getsockname()[1]
    application = build_server(
        settings, engine=engine or settings.engine, base_model=base_model or settings.base_model,
        adapters={**settings.adapters, **_parse_adapters(adapter or [])}, rag=not no_rag,
        vllm_url=vllm_url or settings.vllm_url, launch_vllm=launch, vllm_port=port + 1,
    )
    console.print(f"medloop: OpenAI API on http://{host}:{port}/v1  (model: {application.state.engine.base_name})",
                  soft_wrap=True, highlight=False)
    serve_app(application, listener, settings.shutdown_timeout_s)


DEMO_QUESTIONS = ["What HbA1c target is recommended for most adults with diabetes?", "高血压患者的降压目标是多少？"]


@app.command()
def demo(
    question: Annotated[list[str] | None, typer.Option(help="ask this instead of the two sample questions")] = None,
    max_tokens: Annotated[int, typer.Option()] = 96,
) -> None:
    """The whole serving path on the embedded defaults, then exit: ingest the sample guidelines (if the index is
    empty), start the API on loopback, ask through the official `openai` client, print answers and evidence."""
    import openai

    from medloop.retrieval.index import current_version
    from medloop.serving.live import LiveServer

    settings = Settings()
    if current_version(settings.index_dir) is None:
        console.print(f"demo: ingesting the sample guidelines into {settings.home}")
        run_ingest(settings, [SAMPLE_GUIDELINES], recursive=False, quiet=True)
    application = build_server(settings, engine="local", base_model=settings.base_model, adapters={}, rag=True)
    with LiveServer(application) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=600)
        model = application.state.engine.base_name
        console.print(f"demo: {model} at {live.url}/v1")
        for q in question or DEMO_QUESTIONS:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                               max_tokens=max_tokens, temperature=0)
            out.rule(q)
            out.print(r.choices[0].message.content, markup=False, highlight=False)
            cited = ", ".join(f"{e['guideline_id']}@{e['version']}" for e in r.model_extra.get("evidence", []))
            out.print(f"[dim]{r.usage.completion_tokens} tokens; evidence: {cited or 'none'}[/]")


def _options_from(model: type[BaseModel]):
    """Turn a pydantic model's fields into this command's flags (`lora_dropout` -> `--lora-dropout`,
    lists repeatable, booleans as `--x/--no-x`), so that a new field is a new flag with no list to keep in step.
    Every flag defaults to None, meaning "not given": the preset's value stands."""

    def decorate(fn):
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        for name, field in model.model_fields.items():
            flag = "--" + name.replace("_", "-")
            kind = field.annotation
            args = typing.get_args(kind)
            if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
                kind = next(a for a in args if a is not type(None))
            default = "" if field.is_required() else f" [default: {field.default}]"
            help_ = (field.description or "") + default
            if kind is bool:
                hint, option = bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=help_, show_default=False)
            elif typing.get_origin(kind) is list:
                item = typing.get_args(kind)[0]
                hint, option = list[item] | None, typer.Option(flag, help=help_ + " (repeatable)", show_default=False)
            elif typing.get_origin(kind) is typing.Literal:
                choices = " | ".join(map(str, typing.get_args(kind)))
                hint, option = str | None, typer.Option(flag, help=f"{choices}{help_}", show_default=False)
            else:
                hint, option = kind | None, typer.Option(flag, help=help_, show_default=False)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[hint, option]))
        fn.__signature__ = inspect.Signature(params)
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return decorate


@train_app.callback()
@_options_from(TrainConfig)
def train_cmd(ctx: typer.Context, **given) -> None:
    """Fine-tune a LoRA adapter on SFT data (QLoRA by default): a preset, then any field as a flag.
    `medloop train merge` folds an adapter into the base weights."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from medloop.training import make_config, train
    from medloop.training.data import BadSample

    given = {k: v for k, v in given.items() if v is not None}
    given.setdefault("swanlab_mode", Settings().swanlab_mode)
    try:
        config = make_config(given.pop("preset", "v1"), **given)
        result = train(config, log=console.print)
    except ValidationError as e:
        for err in e.errors():
            console.print(f"[red]error[/] --{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}")
        raise typer.Exit(2) from e
    except (ValueError, BadSample, FileNotFoundError) as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e
    out.print(f"adapter: {result.output_dir}  train loss {result.train_loss:.4f}"
              + (f"  eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""))


@train_app.command("merge")
def train_merge(adapter: Path, output: Path) -> None:
    """Write full merged weights (base + adapter) for deployments that want no adapter."""
    from medloop.training import merge

    out.print(f"merged model: {merge(adapter, output)}")


@scheduler_app.command("start")
def scheduler_start() -> None:
    """Run the scheduler in the foreground (poll the inbox, retrain monthly); Ctrl-C or SIGTERM stops it."""
    import logging

    from medloop.continual import scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings()

    def ready(s):
        for job in s.get_jobs():
            out.print(f"{job.id}: {job.trigger}, next run {job.next_run_time}")

    scheduler.start(settings, on_ready=ready)


@scheduler_app.command("run")
def scheduler_run(job: Annotated[str, typer.Argument(help="ingest | retrain")]) -> None:
    """Run one job now, once."""
    import logging

    from medloop.continual import scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if job not in scheduler.JOBS:
        raise typer.BadParameter(f"unknown job '{job}': choose ingest or retrain")
    result = scheduler.run_job(job)
    out.print_json(json.dumps({k: v for k, v in result.items() if k != "trace"}, default=str, ensure_ascii=False))
    raise typer.Exit(1 if result.get("outcome") == "error" else 0)


@scheduler_app.command("status")
def scheduler_status() -> None:
    """Next run times and the last outcome of each job."""
    from medloop.continual import scheduler

    table = Table()
    for col in ("job", "schedule", "next run", "last run", "last outcome"):
        table.add_column(col)
    for row in scheduler.status(Settings()):
        table.add_row(row["job"], row["schedule"], str(row["next_run"]), str(row["last_started"]),
                      str(row["last_outcome"]))
    out.print(table)


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version with its status and figures."""
    from medloop.continual import AdapterRegistry

    table = Table()
    for col in ("version", "status", "parent", "created", "train loss", "held-out loss", "data"):
        table.add_column(col)
    registry = AdapterRegistry(Settings().adapters_dir)
    for r in registry.versions():
        counts = r.manifest.get("counts", {})
        held = r.metrics.get("heldout_loss_candidate")
        table.add_row(r.version, registry.shown_status(r), r.parent or "-", r.created,
                      f"{r.metrics['train_loss']:.4f}" if "train_loss" in r.metrics else "-",
                      f"{held:.4f}" if held is not None else "-",
                      f"{counts.get('train_total', '-')} samples")
    out.print(table)


@adapters_app.command("show")
def adapters_show(version: str) -> None:
    """One version's full record: data manifest, metrics, gate decision."""
    from dataclasses import asdict

    from medloop.continual import AdapterRegistry

    try:
        record = AdapterRegistry(Settings().adapters_dir).get(version)
    except KeyError as e:
        console.print(f"[red]error[/] {e.args[0]}")
        raise typer.Exit(2) from e
    out.print_json(json.dumps(asdict(record), ensure_ascii=False, default=str))


def _promote_or_rollback(action: str, version: str | None = None) -> None:
    from medloop.continual import AdapterRegistry, hot_load

    settings = Settings()
    registry = AdapterRegistry(settings.adapters_dir)
    try:
        record = registry.promote(version) if action == "promote" else registry.rollback()
    except (KeyError, ValueError) as e:
        console.print(f"[red]error[/] {e.args[0]}")
        raise typer.Exit(2) from e
    out.print(f"live: {record.version}; {hot_load(settings, record)}")


@adapters_app.command("plot")
def adapters_plot(out_file: Annotated[Path, typer.Argument(help="PNG to write")] = Path("loop.png")) -> None:
    """A picture of the loop: each version's gate figures (held-out and regression loss, decision)."""
    from medloop.continual.registry import AdapterRegistry, plot_loop

    try:
        out.print(f"loop metrics: {plot_loop(AdapterRegistry(Settings().adapters_dir), out_file)}")
    except ValueError as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e


@adapters_app.command("promote")
def adapters_promote(version: str) -> None:
    """Make a version live (by hand) and hot-load it into the running server."""
    _promote_or_rollback("promote", version)


@adapters_app.command("rollback")
def adapters_rollback() -> None:
    """Make the previously live version live again, and hot-load it."""
    _promote_or_rollback("rollback")


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

    settings = Settings()
    targets = [evaluation.parse_target(t) for t in target]
    qs = evaluation.load_questions(questions or evaluation.DEFAULT_QUESTIONS)
    local = [t for t in targets if t.url is None]
    with contextlib.ExitStack() as stack:
        local_url = None
        if local:
            model = base_model or settings.base_model
            application = build_server(settings, engine="local", base_model=model,
                                       adapters=_parse_adapters(adapter or []), rag=any(t.rag for t in local))
            for t in local:
                if t.model == "base":
                    t.model = application.state.engine.base_name
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
    file: Annotated[Path | None, typer.Argument(help="labelled JSONL (default: the sample dev set)")] = None,
    heldout: Annotated[bool, typer.Option("--heldout", help="the sample held-out set instead of the dev set")] = False,
    k: Annotated[int, typer.Option("-k", help="evidence shown per answer")] = 3,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="also suggest `min_relevance` from this set")] = False,
    save: Annotated[Path | None, typer.Option("--json", help="write every figure and question here")] = None,
) -> None:
    """hit@1, hit@3, MRR, cited recall, false-cite rate and newest-version share on labelled questions."""
    from medloop.retrieval import Retriever, quality

    path = file or quality.sample_set("heldout" if heldout else "dev")
    try:
        rows = quality.load_labelled(path)
    except (ValueError, OSError) as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e
    retriever = Retriever(Settings())
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
            console.print(f"[yellow]not cited[/] {q['question']}  (top {q['top']}, relevance {q['relevance']})")
        if q.get("false_cite"):
            console.print(f"[yellow]false cite[/] {q['question']}  (cited {q['cited']}, relevance {q['relevance']})")
    if calibrate:
        c = quality.calibrate(retriever, rows, k)
        out.print(f"calibrated min_relevance {c.min_relevance} (any value in [{c.gap[0]}, {c.gap[1]}) gives cited "
                  f"recall {c.cited_recall:.3f} at false-cite rate {c.false_cite_rate:.3f}); now "
                  f"{retriever.settings.min_relevance}")
    if save:
        save.write_text(json.dumps({"file": str(path), **result}, ensure_ascii=False, indent=2))


@eval_app.command("stale")
def eval_stale(
    file: Annotated[Path | None, typer.Argument(help="labelled JSONL (default: the sample dev set)")] = None,
    heldout: Annotated[bool, typer.Option("--heldout", help="the sample held-out set instead of the dev set")] = False,
    save: Annotated[Path | None, typer.Option("--json", help="write every figure and answer here")] = None,
) -> None:
    """The stale-answer check on labelled answers: detection and false-flag rate, by language."""
    from medloop.knowledge import KnowledgeStore
    from medloop.retrieval import quality
    from medloop.retrieval.lexicon import lexicon

    settings = Settings()
    path = file or quality.stale_set("heldout" if heldout else "dev")
    with KnowledgeStore(settings.knowledge_db) as store:
        try:
            result = quality.stale_check_quality(store, path, lexicon(str(settings.lexicon) if settings.lexicon
                                                                       else None))
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
            console.print(f"[yellow]wrong[/] line {a['line']}: expected {a['expected']}, flagged {a['flagged']}: "
                          f"{a['answer']}", markup=False, highlight=False, soft_wrap=True)
    if save:
        save.write_text(json.dumps({"file": str(path), **result}, ensure_ascii=False, indent=2))


@eval_app.command("mcq")
def eval_mcq(
    file: Annotated[Path, typer.Argument(help="JSONL/CSV: MedQA, MedMCQA, CMMLU or medloop layout")],
    base_model: Annotated[str, typer.Option(help="path, hub id, .gguf (default: the served base model)")] = "",
    adapter: Annotated[Path | None, typer.Option()] = None,
    no_evidence: Annotated[bool, typer.Option("--no-evidence", help="skip the with-evidence pass")] = False,
) -> None:
    """Multiple-choice accuracy by option log-likelihood, with and without evidence."""
    from medloop.continual.mcq import MCQFormatError, load_mcq, mcq_accuracy
    from medloop.retrieval import Retriever
    from medloop.training.evaluate import load_for_eval

    settings = Settings()
    try:
        n = len(load_mcq(file))  # format errors before any model loads
    except (MCQFormatError, OSError) as e:
        console.print(f"[red]error[/] {e}")
        raise typer.Exit(2) from e
    model, tokenizer = load_for_eval(base_model or settings.base_model, adapter)
    retriever = None if no_evidence else Retriever(settings)
    with _progress() as progress:
        task = progress.add_task("scoring", total=n * (1 if no_evidence else 2))
        result = mcq_accuracy(model, tokenizer, file, retriever, settings.evidence_k,
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


def main() -> None:
    """`medloop`: the app, with every error a user can act on said in one line (exit 1), never a traceback."""
    import sys

    from pydantic import ValidationError

    from medloop.knowledge.ingest import disk_full

    try:
        app()
    except UserError as e:
        console.print(f"error: {e}", markup=False, highlight=False, style="red",
                      soft_wrap=True)
        sys.exit(1)
    except ValidationError as e:  # the settings (environment or medloop.toml)
        for err in e.errors():
            where = ".".join(map(str, err["loc"])) or e.title
            console.print(f"error: setting {where}: {err['msg']}", markup=False, highlight=False, style="red",
                      soft_wrap=True)
        sys.exit(1)
    except Exception as e:
        if not disk_full(e):
            raise
        where = getattr(e, "filename", None) or Settings.model_construct().home
        console.print(f"error: no space left on the device while writing {where}: free some space and run the "
                      "command again (what was half-written is not kept; the rerun completes it)",
                      markup=False, highlight=False, style="red",
                      soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
