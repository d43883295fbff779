"""The ingest job: the inbox's files routed by kind (guidelines to the knowledge base and the index, training data
and MCQ sets to the next month), bad ones moved aside with their reason, nothing lost."""

from __future__ import annotations

import functools
import json
import shutil
import time
from enum import StrEnum
from pathlib import Path

from medloop.config import Settings
from medloop.continual.hotswap import retry_hot_load
from medloop.knowledge.ingest import FileOutcome
from medloop.knowledge.parsing import SUPPORTED_SUFFIXES
from medloop.retrieval.embedder import encoder
from medloop.retrieval.ingest import IngestBusy, ingest_and_index
from medloop.training.data import BadSample, detect_layout


class Outcome(StrEnum):
    """What one run of a job did (`medloop scheduler status`, the job's JSON)."""

    OK = "ok"
    FAILED_SOME = "failed-some"  # ingest: some files failed, the rest went in
    NOTHING_NEW = "nothing-new"
    SKIPPED = "skipped"  # another retraining holds the lock
    PROMOTED = "promoted"
    REJECTED = "rejected"
    TOO_LITTLE_DATA = "too-little-data"  # skipped: the gate would judge on training data


def move_to(path: Path, folder: Path) -> Path | None:
    """Move a file (or a link, as itself) into `folder`, keeping both when the name is taken; None when it is
    gone already (deleted by someone else meanwhile)."""
    if not path.exists() and not path.is_symlink():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # keep both: the same name can arrive twice
        target = folder / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
    shutil.move(str(path), target)
    return target


def _fail(path: Path, settings: Settings, reason: str) -> None:
    moved = move_to(path, settings.failed_dir)
    if moved is not None:
        moved.with_name(moved.name + ".error.txt").write_text(reason + "\n")


def inbox_files(folder: Path, settle_s: float) -> tuple[list[Path], list[Path], list[Path]]:
    """(files ready, files still being written, symbolic links) in `folder`. A file is ready once it has not
    changed for `settle_s` seconds: a guideline copied in slowly is not read half-written (or move finished files
    in with an atomic rename). Ready files come smallest first, so a large file never holds up the rest."""
    if not folder.exists():
        return [], [], []
    now = time.time()
    ready, settling, links = [], [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink():
            links.append(p)
        elif p.is_file():
            (ready if now - p.stat().st_mtime >= settle_s else settling).append(p)
    return sorted(ready, key=lambda p: p.stat().st_size), settling, links


SYMLINK_REFUSED = ("a symbolic link: refused, it could publish any file the service can read (copy the file into "
                   "the inbox instead)")


GUIDELINE_SUFFIXES = SUPPORTED_SUFFIXES - {".jsonl"}  # a JSONL file is told apart by its first object


def _kind(path: Path) -> str | None:
    """'guidelines' or 'sft' for a file dropped straight into inbox/, or None when it cannot be told."""
    if path.suffix.lower() in GUIDELINE_SUFFIXES:
        return "guidelines"
    if path.suffix.lower() not in {".jsonl", ".json"}:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        obj = json.loads(first) if path.suffix.lower() == ".jsonl" else json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    obj = obj[0] if isinstance(obj, list) and obj else obj
    if not isinstance(obj, dict):
        return None
    try:
        detect_layout(obj)  # one of the SFT layouts `medloop train` reads
        return "sft"
    except BadSample:
        return "guidelines" if {"text", "content"} & obj.keys() else None


def route_inbox(settings: Settings) -> dict[str, int]:
    """Files dropped into inbox/ itself go where they belong (inbox/guidelines/ or inbox/sft/) by what they
    are; one that cannot be told apart goes to failed/ with a note that says where such files go."""
    routed = {"guidelines": 0, "sft": 0, "failed": 0}
    ready, _, links = inbox_files(settings.inbox_dir, settings.loop.inbox_settle_s)
    for link in links:
        _fail(link, settings, SYMLINK_REFUSED)
        routed["failed"] += 1
    for path in ready:
        kind = _kind(path)
        if kind is None:
            _fail(path, settings, f"cannot tell what {path.name} is: put guideline files (md, txt, html, pdf, jsonl "
                  f"with 'text') in {settings.inbox_dir / 'guidelines'} and SFT data (jsonl with 'conversations', "
                  f"'messages' or 'instruction'/'output') in {settings.inbox_dir / 'sft'}")
            routed["failed"] += 1
        elif move_to(path, settings.inbox_dir / kind) is not None:
            routed[kind] += 1
    return routed


@functools.lru_cache(maxsize=1)
def _kept_encoder(index_dir: Path, name: str):
    """The scheduler's encoder, loaded on the first poll with files and kept: a later poll costs its files, not a
    model load."""
    return encoder(index_dir, name)


def ingest_inbox(settings: Settings) -> dict:
    """Ingest everything in inbox/guidelines/ (and guidelines dropped into inbox/ itself); move each file to
    processed/ or to failed/ beside a .error.txt."""
    routed = route_inbox(settings)
    serving = retry_hot_load(settings)
    inbox = settings.inbox_dir / "guidelines"
    inbox.mkdir(parents=True, exist_ok=True)
    files, settling, links = inbox_files(inbox, settings.loop.inbox_settle_s)
    for link in links:
        _fail(link, settings, SYMLINK_REFUSED)
    if not files:
        return {"outcome": Outcome.FAILED_SOME if links else Outcome.NOTHING_NEW, "files": 0, "refused": len(links),
                "settling": len(settling), "routed": routed, "serving": serving}
    try:
        report, synced = ingest_and_index(settings, files, wait_s=0,
                                          embedder=_kept_encoder(settings.index_dir, settings.retrieval.embedder))
    except IngestBusy as e:  # a `medloop ingest` on this home: its files wait for the next poll
        return {"outcome": Outcome.SKIPPED, "reason": str(e)}
    for result in report.files:
        if result.outcome == FileOutcome.FAILED:
            _fail(result.path, settings, result.error)
        else:
            move_to(result.path, settings.processed_dir / "guidelines")
    counts = dict(report.counts)
    return {"outcome": Outcome.FAILED_SOME if report.failed or links else Outcome.OK, "files": len(files), **counts,
            "refused": len(links), "settling": len(settling), "notes": [n for f in report.files for n in f.notes],
            "index_version": synced.version}
