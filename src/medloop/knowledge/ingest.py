"""Files -> store. Each file is parsed, chunked and committed on its own: one bad file costs only itself.

Whatever goes wrong with one file (a parser's exception included) is that file's `FileResult` error, and the
files after it go in; only a full disk stops the run, since no file could be stored then. Folders are walked
without following a symbolic link out of them: a link in the inbox to a file elsewhere would publish whatever
the service can read.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from medloop.knowledge.chunking import Chunker
from medloop.knowledge.parsing import SUPPORTED_SUFFIXES, Limits, ParseError, parse_file
from medloop.knowledge.store import KnowledgeStore, StoreConflict

log = logging.getLogger("medloop.knowledge")


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
    notes: list[str] = field(default_factory=list)  # a live version this file displaced


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


def disk_full(error: BaseException) -> bool:
    """No file can be stored after this one: the run stops (with a clear message) instead of failing each file."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error)


def _walk(folder: Path, recursive: bool) -> Iterable[Path]:
    for top, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        yield from (Path(top) / n for n in sorted(names) if not n.startswith("."))


def collect_files(paths: Iterable[Path], recursive: bool) -> tuple[list[Path], list[FileResult]]:
    """Expand folders into their guideline files; paths that do not exist, and links that lead out of the folder
    they were found in, are failures, not crashes. A file named directly is read as named."""
    files, failures = [], []
    for path in paths:
        if path.is_dir():
            root = path.resolve()
            for p in _walk(path, recursive):
                if p.suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                if p.is_symlink() and not p.resolve().is_relative_to(root):
                    failures.append(FileResult(p, FileOutcome.FAILED, error="a symbolic link to a file outside "
                                               f"{path}: refused (copy the file in instead)"))
                elif p.is_file():
                    files.append(p)
        elif path.exists():
            files.append(path)
        else:
            failures.append(FileResult(path, FileOutcome.FAILED, error="no such file or directory"))
    return files, failures


def ingest_paths(
    store: KnowledgeStore,
    paths: Iterable[Path],
    *,
    recursive: bool = False,
    chunker: Chunker = Chunker(),
    limits: Limits = Limits(),
    on_file: Callable[[FileResult], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> IngestReport:
    files, report_files = collect_files(paths, recursive)
    report = IngestReport(files=report_files)
    if on_start:
        on_start(len(files))
    for path in files:
        result = ingest_file(store, path, chunker=chunker, limits=limits, report=report)
        report.files.append(result)
        if on_file:
            on_file(result)
    return report


def ingest_file(store: KnowledgeStore, path: Path, *, report: IngestReport, chunker: Chunker = Chunker(),
                limits: Limits = Limits()) -> FileResult:
    try:
        docs = parse_file(path, limits)
        stored = store.upsert_many([(doc, chunker(doc.text, doc.is_markdown)) for doc in docs], chunker.signature)
    except (ParseError, StoreConflict) as e:
        return FileResult(path, FileOutcome.FAILED, error=str(e))
    except Exception as e:
        if disk_full(e):
            raise
        log.exception("ingest of %s failed", path)
        return FileResult(path, FileOutcome.FAILED, error=f"unexpected error: {type(e).__name__}: {str(e)[:200]}")
    result = FileResult(path, FileOutcome.UNCHANGED)
    outcomes = []
    for doc, (outcome, superseded, note) in zip(docs, stored, strict=True):
        report.superseded += superseded
        outcomes.append(outcome)
        result.warnings += doc.warnings
        result.documents.append(f"{doc.id}@{doc.version}")
        result.notes += [note] if note else []
    for outcome in (FileOutcome.ADDED, FileOutcome.UPDATED):
        if outcome in outcomes:
            result.outcome = outcome
            break
    return result
