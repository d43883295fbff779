"""SQLite store of guidelines: documents, their versions, and chunks.

"Latest wins": of the versions that share a guideline id, the newest (published date, then version)
is live and the others are marked superseded; they stay for audit. Each file is written in one
transaction and bumps `revision`, so the index can tell exactly what it is behind on.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medloop.knowledge.chunking import Chunk
from medloop.knowledge.parsing import Document

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  doc_id TEXT NOT NULL,
  version TEXT NOT NULL,
  title TEXT NOT NULL,
  issuer TEXT NOT NULL,
  published TEXT NOT NULL,
  language TEXT NOT NULL,
  topics TEXT NOT NULL,
  source TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  ingested_at TEXT NOT NULL,
  superseded INTEGER NOT NULL DEFAULT 0,
  UNIQUE (doc_id, version)
);
-- AUTOINCREMENT: a chunk id is never reused, so an index entry can never point at other text.
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
  ord INTEGER NOT NULL,
  section TEXT NOT NULL,
  text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_version ON chunks(version_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', '0');
"""
# Columns added after the first release: a store written before gets them, empty (its documents re-chunk on their
# next ingest, or by `rechunk` from the source file).
ADDED_COLUMNS = {"chunking": "TEXT NOT NULL DEFAULT ''", "text": "TEXT NOT NULL DEFAULT ''",
                 "is_markdown": "INTEGER NOT NULL DEFAULT 1"}


@dataclass
class ChunkRecord:
    """A chunk with the metadata a citation needs."""

    chunk_id: int
    doc_id: str
    version: str
    title: str
    issuer: str
    published: str
    language: str
    section: str
    text: str
    superseded: bool


# The columns of a ChunkRecord, in its order (superseded last).
CHUNK_RECORDS = ("SELECT c.id, v.doc_id, v.version, v.title, v.issuer, v.published, v.language, c.section, c.text,"
                 " v.superseded FROM chunks c JOIN versions v ON v.id = c.version_id")


def _record(row: tuple) -> ChunkRecord:
    return ChunkRecord(*row[:-1], superseded=bool(row[-1]))


class StoreConflict(ValueError):
    """A document that would silently replace another one: refused, with what it would have replaced."""


def version_key(published: str, version: str) -> tuple:
    natural = tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d]+", version))
    return (published, natural)


class KnowledgeStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a killed process (not a power cut) without an fsync per file.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        have = {row[1] for row in self.db.execute("PRAGMA table_info(versions)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE versions ADD COLUMN {column} {kind}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def revision(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0])

    def upsert_many(self, items: list[tuple[Document, list[Chunk]]], chunking: str = "") -> list[tuple[str, int, str]]:
        """Store the documents of one file in one transaction: all of the file or nothing. `chunking`: the
        chunker's signature; a document stored with another is re-chunked even when its text is the same.
        Returns (outcome, versions newly superseded, a note when the live version changed) per document."""
        with self.db:
            results = [self._upsert(doc, chunks, chunking) for doc, chunks in items]
            if any(outcome != "unchanged" for outcome, _, _ in results):
                self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='revision'")
            return results

    def _live_version(self, doc_id: str) -> str | None:
        row = self.db.execute("SELECT version FROM versions WHERE doc_id=? AND superseded=0", (doc_id,)).fetchone()
        return row[0] if row else None

    def _upsert(self, doc: Document, chunks: list[Chunk], chunking: str) -> tuple[str, int, str]:
        content_hash = doc.content_hash
        row = self.db.execute(
            "SELECT id, content_hash, language, source, chunking FROM versions WHERE doc_id=? AND version=?",
            (doc.id, doc.version),
        ).fetchone()
        if row and row[1] == content_hash and row[4] == chunking:
            return "unchanged", 0, ""
        if row and row[2] != doc.language:
            raise StoreConflict(f"'{doc.id}' version '{doc.version}' is already stored in '{row[2]}' (from "
                                f"{Path(row[3]).name}); this one is '{doc.language}': give the translation its own "
                                "id or version instead of replacing the other edition")
        before, live_before = self._superseded_ids(doc.id), self._live_version(doc.id)
        fields = (
            doc.title, doc.issuer, doc.published, doc.language,
            json.dumps(doc.topics, ensure_ascii=False), doc.source, content_hash,
            dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), chunking, doc.text, int(doc.is_markdown),
        )
        if row:
            outcome, version_id = "updated", row[0]
            self.db.execute(
                "UPDATE versions SET title=?, issuer=?, published=?, language=?, topics=?, source=?,"
                " content_hash=?, ingested_at=?, chunking=?, text=?, is_markdown=? WHERE id=?",
                (*fields, version_id),
            )
        else:
            outcome = "added"
            version_id = self.db.execute(
                "INSERT INTO versions (doc_id, version, title, issuer, published, language, topics,"
                " source, content_hash, ingested_at, chunking, text, is_markdown) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (doc.id, doc.version, *fields),
            ).lastrowid
        self._replace_chunks(version_id, chunks)
        self._mark_latest(doc.id)
        live_after = self._live_version(doc.id)
        note = f"'{doc.id}': version '{live_after}' is live now, replacing '{live_before}'" \
            if live_before is not None and live_after != live_before else ""
        return outcome, len(self._superseded_ids(doc.id) - before), note

    def _replace_chunks(self, version_id: int, chunks: list[Chunk]) -> None:
        self.db.execute("DELETE FROM chunks WHERE version_id=?", (version_id,))
        self.db.executemany(
            "INSERT INTO chunks (version_id, ord, section, text) VALUES (?,?,?,?)",
            [(version_id, i, c.section, c.text) for i, c in enumerate(chunks)],
        )

    def rechunk(self, chunker, reread=None) -> tuple[int, list[tuple[str, str]]]:
        """Chunk again every stored version chunked otherwise than `chunker` (another rule or size), from its
        stored text; a version stored before texts were kept is read again from its source file by `reread`
        (path -> the file's documents), when the file is still there. (versions re-chunked, "id@version" of the
        ones that could not be, with their source file)."""
        stale = self.db.execute("SELECT id, doc_id, version, text, is_markdown, source FROM versions WHERE"
                                " chunking != ?", (chunker.signature,)).fetchall()
        done, left = 0, []
        for version_id, doc_id, version, text, is_markdown, source in stale:
            if not text and reread is not None and Path(source).is_file():
                found = [d for d in reread(Path(source)) if (d.id, d.version) == (doc_id, version)]
                text, is_markdown = (found[0].text, found[0].is_markdown) if found else ("", is_markdown)
            if not text:
                left.append((f"{doc_id}@{version}", source))
                continue
            with self.db:
                self._replace_chunks(version_id, chunker(text, bool(is_markdown)))
                self.db.execute("UPDATE versions SET chunking=?, text=? WHERE id=?", (chunker.signature, text,
                                                                                     version_id))
                self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='revision'")
            done += 1
        return done, left

    def _superseded_ids(self, doc_id: str) -> set[int]:
        rows = self.db.execute("SELECT id FROM versions WHERE doc_id=? AND superseded=1", (doc_id,))
        return {r[0] for r in rows}

    def _mark_latest(self, doc_id: str) -> None:
        rows = self.db.execute("SELECT id, published, version FROM versions WHERE doc_id=?", (doc_id,)).fetchall()
        latest = max(rows, key=lambda r: version_key(r[1], r[2]))[0]
        self.db.execute("UPDATE versions SET superseded = (id != ?) WHERE doc_id=?", (latest, doc_id))

    def chunks(self, ids: list[int] | None = None) -> list[ChunkRecord]:
        sql = CHUNK_RECORDS
        if ids is None:
            rows = self.db.execute(sql + " ORDER BY c.id").fetchall()
        else:
            rows = []
            for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
                part = ids[start : start + 900]
                rows += self.db.execute(sql + f" WHERE c.id IN ({','.join('?' * len(part))})", part).fetchall()
        return [_record(r) for r in rows]

    def guideline_chunks(self, doc_id: str) -> list[ChunkRecord]:
        """Every chunk of every version of one guideline, live and superseded."""
        rows = self.db.execute(CHUNK_RECORDS + " WHERE v.doc_id=? ORDER BY v.published, c.ord", (doc_id,))
        return [_record(r) for r in rows]

    def iter_chunk_texts(self, ids: list[int]) -> Iterator[tuple[int, str, str, str]]:
        """(chunk id, guideline title, section, text) of the given chunks."""
        for start in range(0, len(ids), 900):
            part = ids[start : start + 900]
            yield from self.db.execute(
                "SELECT c.id, v.title, c.section, c.text FROM chunks c JOIN versions v ON v.id=c.version_id"
                f" WHERE c.id IN ({','.join('?' * len(part))}) ORDER BY c.id",
                part,
            )

    def bilingual_terms(self) -> list[tuple[str, str]]:
        """The terms the live guidelines give in two languages (see `knowledge.terms`)."""
        from medloop.knowledge.terms import bilingual_terms

        rows = self.db.execute("SELECT text FROM versions WHERE superseded=0 ORDER BY id")
        return list(dict.fromkeys(pair for (text,) in rows for pair in bilingual_terms(text)))

    def chunk_ids(self, after: int = 0) -> np.ndarray:
        """The ids of the chunks newer than `after`, sorted (ids only grow: AUTOINCREMENT)."""
        rows = self.db.execute("SELECT id FROM chunks WHERE id > ? ORDER BY id", (after,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def chunk_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def versions(self, doc_id: str | None = None) -> list[dict]:
        sql = "SELECT doc_id, version, title, issuer, published, superseded, ingested_at, source FROM versions"
        rows = self.db.execute(sql + (" WHERE doc_id=?" if doc_id else "") + " ORDER BY doc_id, published",
                               (doc_id,) if doc_id else ())
        keys = ["doc_id", "version", "title", "issuer", "published", "superseded", "ingested_at", "source"]
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def versions_ingested_since(self, since: str) -> list[dict]:
        return [v for v in self.versions() if v["ingested_at"] > since and not v["superseded"]]
