"""Files -> store. Each file is parsed, chunked and committed on its own: one bad file costs only itself."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from medloop.knowledge.chunking import chunk_text
from medloop.knowledge.parsing import SUPPORTED_SUFFIXES, ParseError, parse_file
from medloop.knowledge.store import KnowledgeStore


class FileOutcome(StrEnum):
    ADDED = "added"
    UPDATED = "updated"  # same id and version, new content
    UNCHANGED = "unchanged"  # same content hash: nothing to do
    FAILED = "failed"


@dataclass
class FileResult:
    path: Path
    outcome: FileOutcome
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)  # "id@version"


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    superseded: int = 0

    @property
    def counts(self) -> Counter:
        c = Counter(f.outcome for f in self.files)
        c["superseded"] = self.superseded
        return c

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.outcome == FileOutcome.FAILED]


def collect_files(paths: Iterable[Path], recursive: bool) -> tuple[list[Path], list[FileResult]]:
    """Expand directories; paths that do not exist are failures, not crashes."""
    files, missing = [], []
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            files += sorted(p for p in found if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                            and not p.name.startswith("."))
        elif path.exists():
            files.append(path)
        else:
            missing.append(FileResult(path, FileOutcome.FAILED, error="no such file or directory"))
    return files, missing


def ingest_paths(
    store: KnowledgeStore,
    paths: Iterable[Path],
    *,
    recursive: bool = False,
    chunk_size: int = 360,
    chunk_overlap: int = 40,
    on_file: Callable[[FileResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> IngestReport:
    files, report_files = collect_files(paths, recursive)
    report = IngestReport(files=report_files)
    if on_start:
        on_start(len(files))
    for path in files:
        result = ingest_file(store, path, chunk_size=chunk_size, chunk_overlap=chunk_overlap, report=report)
        report.files.append(result)
        if on_file:
            on_file(result)
    return report


def ingest_file(
    store: KnowledgeStore, path: Path, *, chunk_size: int, chunk_overlap: int, report: IngestReport
) -> FileResult:
    try:
        docs = parse_file(path)
    except ParseError as e:
        return FileResult(path, FileOutcome.FAILED, error=str(e))
    result = FileResult(path, FileOutcome.UNCHANGED)
    items = [(doc, chunk_text(doc.text, max_units=chunk_size, overlap=chunk_overlap, is_markdown=doc.is_markdown))
             for doc in docs]
    outcomes = []
    for doc, (outcome, superseded) in zip(docs, store.upsert_many(items), strict=True):
        report.superseded += superseded
        outcomes.append(outcome)
        result.warnings += doc.warnings
        result.documents.append(f"{doc.id}@{doc.version}")
    for outcome in (FileOutcome.ADDED, FileOutcome.UPDATED):
        if outcome in outcomes:
            result.outcome = outcome
            break
    return result
