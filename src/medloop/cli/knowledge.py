"""`medloop ingest`, `medloop search`, `medloop index`: guideline files in, evidence out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medloop.cli.common import _progress, app, console, index_app, load_settings, out
from medloop.config import Settings
from medloop.errors import UserError


def require_guidelines(settings: Settings) -> None:
    """Refuse to work on a home with no guideline indexed: its hits and figures would be empties and zeros."""
    from medloop.retrieval.segments import indexed_chunks

    if not indexed_chunks(settings.index_dir):
        raise UserError(f"no guidelines are indexed in {settings.home}: run `medloop ingest FILES_OR_FOLDERS` first "
                        "(`medloop demo` ingests the sample guidelines)")


def run_ingest(settings: Settings, paths: list[Path], recursive: bool, quiet: bool = False):
    """Ingest with progress bars: files, then embedding of the new chunks. No guideline file found is an error,
    with the `-r` hint when the files may sit in sub-folders."""
    from medloop.retrieval.ingest import ingest_and_index

    with _progress() as progress:
        files = progress.add_task("ingest", total=None, visible=not quiet)
        embed = progress.add_task("index", total=None, visible=not quiet)
        report, synced = ingest_and_index(
            settings, paths, recursive=recursive, wait_s=settings.retrieval.ingest_wait_s,
            on_start=lambda n: progress.update(files, total=n),
            on_file=lambda r: progress.advance(files),
            on_progress=lambda done, total: progress.update(embed, completed=done, total=total),
        )
    if not report.files:
        folders = [p for p in paths if p.is_dir() and any(c.is_dir() for c in p.iterdir())]
        hint = f"; {', '.join(map(str, folders))} has sub-folders: add -r to read them" if folders and not recursive \
            else ""
        raise UserError(f"no guideline files (md, txt, html, pdf, jsonl) in {', '.join(map(str, paths))}{hint}")
    return report, synced


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="guideline files or folders (md, txt, html, pdf, jsonl)")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="descend into sub-folders")] = False,
) -> None:
    """Ingest guideline files: parse, chunk, version (newest wins) and index them."""
    from medloop.knowledge.ingest import FileOutcome
    from medloop.retrieval.index import ensure_query_encoder

    settings = load_settings()
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
    if not synced.total:
        raise UserError(f"the index of {settings.home} holds no chunks: no file above gave any text")
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

    settings = load_settings()
    require_guidelines(settings)
    hits = Retriever(settings).search(question, k, include_superseded=include_superseded)
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
        mark = f" ({h.evidence:.2f})" if h.relevant else f" (weak {h.evidence:.2f})"
        table.add_row(str(i), c.title + (" [superseded]" if c.superseded else ""), c.issuer, c.version,
                      c.published, c.section, f"{h.score:.4f}{mark}", c.text[:200])
    out.print(table)


@index_app.command("rebuild")
def index_rebuild() -> None:
    """Re-embed every chunk and write a fresh index version (after changing the embedder or index type)."""
    from medloop.knowledge import KnowledgeStore
    from medloop.retrieval import load_embedder, sync_index
    from medloop.retrieval.index import ensure_query_encoder

    settings = load_settings()
    embedder = load_embedder(settings.retrieval.embedder)
    with _progress() as progress:
        task = progress.add_task("embed", total=None)
        with KnowledgeStore(settings.knowledge_db) as store:
            result = sync_index(settings, store, embedder=embedder, rebuild=True,
                                on_progress=lambda d, t: progress.update(task, completed=d, total=t))
    ensure_query_encoder(settings, embedder, force=True)
    out.print(f"index v{result.version}: {result.total} chunks")


@index_app.command("rechunk")
def index_rechunk() -> None:
    """Chunk again every stored document chunked with another rule or size (chunk_size, chunk_overlap), then bring
    the index up to date. (A document is also re-chunked whenever its file is ingested again.)"""
    from medloop.knowledge import KnowledgeStore
    from medloop.knowledge.parsing import ParseError, parse_file
    from medloop.retrieval import sync_index

    settings = load_settings()

    unreadable: dict[str, str] = {}  # source file -> why it no longer parses

    def reread(path: Path):
        try:
            return parse_file(path, settings.files)
        except ParseError as e:
            unreadable[str(path)] = str(e)
            return []

    with KnowledgeStore(settings.knowledge_db) as store:
        done, left = store.rechunk(settings.chunks, reread)
        with _progress() as progress:
            task = progress.add_task("index", total=None)
            result = sync_index(settings, store, on_progress=lambda d, t: progress.update(task, completed=d, total=t))
    for name, source in left:
        why = f"its file no longer parses ({unreadable[source]})" if source in unreadable else "its file is gone"
        console.print(f"not re-chunked: {name}: its text was stored before texts were kept and {why}; ingest the "
                      "file again", markup=False, highlight=False, soft_wrap=True)
    out.print(f"{done} documents re-chunked; index v{result.version}: {result.total} chunks")
    raise typer.Exit(1 if left else 0)


@index_app.command("compact")
def index_compact() -> None:
    """Merge the index's segments into one, without removed chunks (nothing is re-embedded)."""
    from medloop.retrieval.index import compact_index

    settings = load_settings()
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
    from medloop.retrieval.segments import read_meta

    settings = load_settings()
    meta = read_meta(settings.index_dir)
    if meta is None:
        out.print("no index yet: run `medloop ingest`")
        return
    with KnowledgeStore(settings.knowledge_db) as store:
        behind = store.revision() != meta["store_revision"]
    out.print_json(json.dumps({**meta, "behind_store": behind}, ensure_ascii=False))
