"""Files -> store -> index: what `medloop ingest` and the scheduler's ingest job both run, one writer at a time."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from medloop.config import Settings
from medloop.errors import UserError
from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.knowledge.chunking import Chunker
from medloop.knowledge.parsing import Limits
from medloop.retrieval.index import sync_index


class IngestBusy(UserError):
    """Another ingest (a CLI run or a scheduler) holds this data home."""


def ingest_and_index(settings: Settings, paths: list[Path], *, recursive: bool = False, wait_s: float = 0,
                     on_start=None, on_file=None, on_progress=None, embedder=None):
    """Ingest the files, then bring the index up to the store. Two ingests on one home would race for the same
    rows: the second waits up to `wait_s` for the first, then raises IngestBusy."""
    settings.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(settings.home / ".ingest.lock")
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise IngestBusy(f"another ingest is running on {settings.home} (waited {wait_s:g} s): try again when "
                         "it is done") from None
    try:
        with KnowledgeStore(settings.knowledge_db) as store:
            report = ingest_paths(store, paths, recursive=recursive, chunker=Chunker.from_settings(settings),
                                  limits=Limits.from_settings(settings), on_start=on_start, on_file=on_file)
            return report, sync_index(settings, store, embedder=embedder, on_progress=on_progress)
    finally:
        lock.release()
