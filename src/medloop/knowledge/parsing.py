"""Guideline files -> `Document`s: Markdown (YAML front matter), text, HTML, PDF, JSONL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medloop.jsonl import JSONLError, json_objects
from medloop.knowledge.language import language_of

SUPPORTED_SUFFIXES = {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl"}
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?", re.DOTALL)


class ParseError(ValueError):
    """A file that cannot become a document; the message says why, for the user."""


@dataclass
class Document:
    id: str
    title: str
    version: str
    text: str
    source: str
    issuer: str = ""
    published: str = ""  # ISO date
    language: str = ""
    topics: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    is_markdown: bool = True

    @property
    def content_hash(self) -> str:
        meta = json.dumps(
            [self.id, self.title, self.version, self.issuer, self.published, self.language, self.topics],
            ensure_ascii=False,
        )
        return hashlib.sha256((meta + "\0" + self.text).encode()).hexdigest()


def parse_file(path: Path) -> list[Document]:
    """Parse one file. Raises ParseError with a reason a user can act on."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ParseError(f"unsupported file type '{suffix or path.name}'")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ParseError(f"cannot read file: {e.strerror or e}") from e
    if not raw.strip():
        raise ParseError("file is empty")
    if suffix == ".pdf":
        return [_finish(path, {}, _pdf_text(path), is_markdown=False)]
    if b"\0" in raw[:8192]:
        raise ParseError("file looks binary (NUL bytes), not text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParseError(f"not valid UTF-8 (byte {e.start}): re-save the file as UTF-8") from e
    if suffix == ".jsonl":
        return _jsonl_documents(path, text)
    if suffix in {".html", ".htm"}:
        return [_finish(path, *_html(text), is_markdown=True)]
    meta, body = _front_matter(text) if suffix in {".md", ".markdown"} else ({}, text)
    return [_finish(path, meta, body, is_markdown=suffix != ".txt")]


def _front_matter(text: str) -> tuple[dict, str]:
    m = FRONT_MATTER.match(text)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark else ""
        raise ParseError(f"broken YAML front matter{where}: {getattr(e, 'problem', e)}") from e
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ParseError("front matter must be a YAML mapping of key: value")
    return meta, text[m.end():]


def _html(text: str) -> tuple[dict, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "nav", "footer"]):
        tag.decompose()
    meta = {}
    if soup.title and soup.title.string:
        meta["title"] = soup.title.string.strip()
    for m in soup.find_all("meta"):
        name, content = m.get("name"), m.get("content")
        if name and content and name.lower() in {"id", "version", "issuer", "published", "language"}:
            meta[name.lower()] = content
    # Headings become Markdown headings so that chunking follows the document's sections.
    lines = []
    body = soup.body or soup
    for el in body.find_all(["h1", "h2", "h3", "h4", "p", "li", "td", "pre"]):
        words = el.get_text(" ", strip=True)
        if not words:
            continue
        level = int(el.name[1]) if el.name[0] == "h" and el.name[1:].isdigit() else 0
        lines.append(("#" * level + " " + words) if level else words)
    return meta, "\n\n".join(lines)


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError, TypeError) as e:
        raise ParseError(f"unreadable PDF: {e}") from e
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise ParseError("PDF has no extractable text (scanned? run OCR first)")
    return text


def _jsonl_documents(path: Path, text: str) -> list[Document]:
    docs = []
    try:
        objects = list(json_objects(text))
    except JSONLError as e:
        raise ParseError(str(e)) from e
    for lineno, obj in objects:
        body = obj.get("text") or obj.get("content") or ""
        if not isinstance(body, str) or not body.strip():
            raise ParseError(f"line {lineno}: no 'text' or 'content'")
        meta = {k: v for k, v in obj.items() if k not in {"text", "content"}}
        if "id" not in meta:
            meta["id"] = f"{path.stem}-{lineno}"
        docs.append(_finish(path, meta, body, is_markdown=True))
    if not docs:
        raise ParseError("no documents in JSONL file")
    return docs


def _as_date(value) -> str:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value).strip() if value else ""


def _finish(path: Path, meta: dict, body: str, *, is_markdown: bool) -> Document:
    body = body.strip()
    if not body:
        raise ParseError("document has no text after its metadata")
    warnings = []
    doc_id = str(meta.get("id") or "").strip()
    if not doc_id:
        doc_id = re.sub(r"[^\w\-]+", "-", path.stem).strip("-").lower() or "document"
        warnings.append(f"no 'id': using '{doc_id}' from the file name")
    published = _as_date(meta.get("published"))
    version = str(meta.get("version") or "").strip()
    if not version:
        version = published or dt.date.fromtimestamp(path.stat().st_mtime).isoformat()
        warnings.append(f"no 'version': using '{version}' from the {'published date' if published else 'file date'}")
    title = str(meta.get("title") or "").strip()
    if not title:
        heading = re.search(r"^#\s+(.+)$", body, re.MULTILINE)
        title = heading.group(1).strip() if heading else doc_id
    topics = meta.get("topics") or []
    if isinstance(topics, str):
        topics = [t.strip() for t in re.split(r"[,，]", topics) if t.strip()]
    return Document(
        id=doc_id,
        title=title,
        version=version,
        text=body,
        source=str(path),
        issuer=str(meta.get("issuer") or "").strip(),
        published=published,
        language=str(meta.get("language") or language_of(body)),
        topics=[str(t) for t in topics],
        warnings=warnings,
        is_markdown=is_markdown,
    )
