"""Guideline files -> versioned, chunked knowledge in SQLite."""

from medloop.knowledge.ingest import FileResult, IngestReport, ingest_paths
from medloop.knowledge.parsing import Document, ParseError, parse_file
from medloop.knowledge.store import ChunkRecord, KnowledgeStore

__all__ = [
    "ChunkRecord", "Document", "FileResult", "IngestReport", "KnowledgeStore", "ParseError",
    "ingest_paths", "parse_file",
]
