"""Files -> store -> index: what `medloop ingest` and the scheduler's ingest job both run, one writer at a time."""

from __future__ import annotations

from pathlib import Path

from medloop.config import Settings
from medloop.errors import UserError
from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.locks import exclusive
from medloop.retrieval.dictionary import dictionary
from medloop.retrieval.index import sync_index


class IngestBusy(UserError):
    """Another ingest (a CLI run or a scheduler) holds this data home."""


def ingest_and_index(settings: Settings, paths: list[Path], *, recursive: bool = False, wait_s: float = 0,
                     on_start=None, on_file=None, on_progress=None, embedder=None):
    """Ingest the files, then bring the index up to the store. Two ingests on one home would race for the same
    rows: the second waits up to `wait_s` for the first, then raises IngestBusy."""
    with exclusive(settings.home / ".ingest.lock", wait_s) as held:
        if not held:
            raise IngestBusy(f"another ingest is running on {settings.home} (waited {wait_s:g} s): try again when "
                             "it is done")
        with KnowledgeStore(settings.knowledge_db) as store:
            report = ingest_paths(store, paths, recursive=recursive, chunker=settings.chunks,
                                  limits=settings.files, on_start=on_start, on_file=on_file)
            synced = sync_index(settings, store, embedder=embedder, on_progress=on_progress)
    dictionary()  # built once per machine: here rather than in the first question's time
    return report, synced
