"""`medloop serve` and `medloop demo`: the OpenAI-compatible API with evidence."""

from __future__ import annotations

from typing import Annotated

import typer

from medloop.cli.common import app, console, load_settings, out
from medloop.cli.knowledge import run_ingest
from medloop.config import Settings
from medloop.errors import UserError
from medloop.resources import SAMPLE_GUIDELINES


def _parse_adapters(values: list[str]) -> dict[str, str]:
    adapters = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--adapter takes NAME=PATH, got '{v}'")
        adapters[name] = path
    return adapters


def ensure_sample_index(settings: Settings) -> None:
    """`demo`, `serve --demo`: the sample guidelines ingested when the index holds nothing (no index yet, or one of
    no chunks); an ingest that leaves it empty is an error naming each file and why."""
    from medloop.retrieval.segments import indexed_chunks

    if indexed_chunks(settings.index_dir):
        return
    console.print(f"demo: ingesting the sample guidelines into {settings.home}", highlight=False)
    report, synced = run_ingest(settings, [SAMPLE_GUIDELINES], recursive=False, quiet=True)
    if report.failed or not synced.total:
        why = "; ".join(f"{f.path}: {f.error}" for f in report.failed) or "they gave no chunks"
        raise UserError(f"the sample guidelines did not ingest into {settings.home}: {why}")


def build_server(settings: Settings, **kwargs):
    """The server `medloop serve` runs, with the registry's live adapter served under its stable name."""
    from medloop.continual.registry import served_live
    from medloop.serving.server import build_server as build

    adapters, versions, status = served_live(settings.adapters_dir, settings.loop.adapter_name,
                                             kwargs.pop("adapters", {}))
    return build(settings, adapters=adapters, versions=versions, registry_status=status, **kwargs)


@app.command()
def serve(
    engine: Annotated[str, typer.Option(help="local (transformers+peft), vllm or llamacpp")] = "",
    base_model: Annotated[str, typer.Option(help="path, hub id or .gguf file")] = "",
    adapter: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a LoRA adapter (repeatable)")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    vllm_url: Annotated[str, typer.Option(help="a running `vllm serve --enable-lora` upstream")] = "",
    launch: Annotated[bool, typer.Option("--launch", help="start vLLM or llama-server with the right flags")] = False,
    no_rag: Annotated[bool, typer.Option("--no-rag", help="serve without guideline evidence")] = False,
    demo: Annotated[bool, typer.Option("--demo", help="ingest the sample guidelines if the index is empty")] = False,
) -> None:
    """Serve the OpenAI-compatible chat API with guideline evidence (`--port 0`: a free port, printed)."""
    import socket

    from medloop.retrieval.segments import indexed_chunks
    from medloop.serving.server import serve as serve_app

    settings = load_settings()
    if demo:
        ensure_sample_index(settings)
    elif not no_rag and not indexed_chunks(settings.index_dir):
        console.print(f"[yellow]no guidelines indexed in {settings.home}: answers carry no evidence until `medloop "
                      "ingest FILES_OR_FOLDERS` fills it (the running server picks it up); `--demo` ingests the "
                      "sample guidelines[/]", soft_wrap=True, highlight=False)
    if not settings.serving.api_keys and host not in {"127.0.0.1", "localhost", "::1"}:
        console.print(f"[yellow]no API key configured (MEDLOOP_SERVING__API_KEYS): binding to 127.0.0.1, not {host}[/]")
        host = "127.0.0.1"
    elif not settings.serving.api_keys:
        console.print("[yellow]no API key configured: serving on loopback only[/]")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    port = listener.getsockname()[1]
    application = build_server(
        settings, engine=engine or settings.serving.engine, base_model=base_model or settings.serving.base_model,
        adapters={**settings.serving.adapters, **_parse_adapters(adapter or [])}, rag=not no_rag,
        url=vllm_url, launch=launch, port=port + 1,
    )
    model = application.state.engine.adapters.base_name
    console.print(f"medloop: OpenAI API on http://{host}:{port}/v1  (model: {model})", soft_wrap=True, highlight=False)
    serve_app(application, listener, settings.serving.shutdown_timeout_s)


DEMO_QUESTIONS = ["What HbA1c target is recommended for most adults with diabetes?", "高血压患者的降压目标是多少？"]


@app.command()
def demo(
    question: Annotated[list[str] | None, typer.Option(help="ask this instead of the two sample questions")] = None,
    max_tokens: Annotated[int, typer.Option()] = 96,
) -> None:
    """The whole serving path on the embedded defaults, then exit: ingest the sample guidelines (if the index is
    empty), start the API on loopback, ask through the official `openai` client, print answers and evidence."""
    import openai

    from medloop.serving.live import LiveServer

    settings = load_settings()
    ensure_sample_index(settings)
    application = build_server(settings, engine="local", base_model=settings.serving.base_model, adapters={}, rag=True)
    with LiveServer(application) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=600)
        model = application.state.engine.adapters.base_name
        console.print(f"demo: {model} at {live.url}/v1")
        for q in question or DEMO_QUESTIONS:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                               max_tokens=max_tokens, temperature=0)
            out.rule(q)
            out.print(r.choices[0].message.content, markup=False, highlight=False)
            cited = ", ".join(f"{e['guideline_id']}@{e['version']}" for e in r.model_extra.get("evidence", []))
            out.print(f"[dim]{r.usage.completion_tokens} tokens; evidence: {cited or 'none'}[/]")
