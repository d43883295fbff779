"""Guideline files -> `Document`s: Markdown (YAML front matter), text, HTML, PDF, JSONL.

A file is data, never code or layout: front matter is read without YAML aliases (an alias bomb expands a few
hundred bytes into gigabytes) or Python tags; every metadata field is checked for its type and made one line
of at most `max_field_chars` characters without control or bidi-override characters (a title with a newline
would otherwise add lines, a fake citation or warning, to the evidence block); a `published` date must be a
real date, not in the future; the file must be under `max_file_bytes`; PDFs decompress under a limit and
encrypted ones are opened with the empty password their publishers ship them with. Every way a file can be bad
is a `ParseError` that names the file's line or field, never an exception that stops the files after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from medloop.jsonl import JSONLError, json_objects
from medloop.knowledge.language import language_of

SUPPORTED_SUFFIXES = {".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".jsonl"}
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?", re.DOTALL)
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


class ParseError(ValueError):
    """A file that cannot become a document; the message says why, for the user."""


class Limits(BaseModel):
    """What a guideline file may be, checked before the work it would cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_file_mb: float = Field(20, gt=0, description="a larger guideline file is refused before it is read")
    max_field_chars: int = Field(300, ge=20, description="titles and issuers longer than this are cut; ids and "
                                 "versions refused")
    future_date_days: int = Field(1, ge=0, description="a `published` date further ahead is refused (time zones: "
                                  "a day ahead is believed)")
    pdf_max_stream_mb: float = Field(50, gt=0, description="what one PDF stream may decompress to")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 2**20)

    @property
    def pdf_max_stream_bytes(self) -> int:
        return int(self.pdf_max_stream_mb * 2**20)


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
    line: int = 0  # the JSONL line it came from (0 for other files)

    @property
    def content_hash(self) -> str:
        meta = json.dumps(
            [self.id, self.title, self.version, self.issuer, self.published, self.language, self.topics],
            ensure_ascii=False,
        )
        return hashlib.sha256((meta + "\0" + self.text).encode()).hexdigest()


def one_line(text: str, limit: int | None = None) -> str:
    """Text as one line: control characters (newlines too) become spaces, bidi overrides go, spaces fold, and
    (given a limit) it is cut there with an ellipsis. What metadata must be before it reaches a citation."""
    text = text.translate(BIDI_CONTROLS)
    text = "".join(" " if unicodedata.category(c) in {"Cc", "Zl", "Zp"} else c for c in text)
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 1].rstrip() + "…"


def parse_file(path: Path, limits: Limits = Limits()) -> list[Document]:
    """Parse one file. Raises ParseError with a reason a user can act on."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ParseError(f"unsupported file type '{suffix or path.name}'")
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ParseError(f"file is {size / 2**20:.1f} MB, above the limit of {limits.max_file_bytes / 2**20:g} MB "
                             "(max_file_mb): split it, or raise the limit")
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise ParseError("file vanished before it was read") from e
    except OSError as e:
        raise ParseError(f"cannot read file: {e.strerror or e}") from e
    if not raw.strip():
        raise ParseError("file is empty")
    if suffix == ".pdf":
        return [_finish(path, {}, _pdf_text(path, limits), is_markdown=False, limits=limits)]
    if b"\0" in raw[:8192]:
        raise ParseError("file looks binary (NUL bytes), not text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ParseError(f"not valid UTF-8 (byte {e.start}): re-save the file as UTF-8") from e
    if suffix == ".jsonl":
        return _jsonl_documents(path, text, limits)
    if suffix in {".html", ".htm"}:
        return [_finish(path, *_html(text), is_markdown=True, limits=limits)]
    meta, body = _front_matter(text) if suffix in {".md", ".markdown"} else ({}, text)
    return [_finish(path, meta, body, is_markdown=suffix != ".txt", limits=limits)]


class _DataLoader(yaml.SafeLoader):
    """YAML as plain data: no aliases (no alias bombs), and dates left as text so that `_published` can say which
    field holds an impossible one. SafeLoader already refuses Python objects."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in front matter", mark)
        return super().compose_node(parent, index)


_DataLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _front_matter(text: str) -> tuple[dict, str]:
    m = FRONT_MATTER.match(text)
    if not m:
        return {}, text
    try:
        meta = yaml.load(m.group(1), Loader=_DataLoader)  # noqa: S506 - a SafeLoader without aliases
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark else ""
        raise ParseError(f"broken YAML front matter{where}: {getattr(e, 'problem', None) or e}") from e
    except (ValueError, TypeError, AttributeError, RecursionError) as e:  # a tag like !!float "abc"
        raise ParseError(f"broken YAML front matter: {type(e).__name__}: {str(e)[:100]}") from e
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


def _pdf_text(path: Path, limits: Limits) -> str:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PyPdfError

    cap = limits.pdf_max_stream_bytes
    try:
        with apply_configuration(zlib_maximum_output_length=cap, lzw_maximum_output_length=cap,
                                 run_length_maximum_output_length=cap, maximum_declared_stream_length=cap):
            reader = PdfReader(path)
            if reader.is_encrypted and not reader.decrypt(""):
                raise ParseError("encrypted PDF that needs a password: not supported (save an unprotected copy)")
            pages = [page.extract_text() or "" for page in reader.pages]
    except ParseError:
        raise
    except LimitReachedError as e:
        raise ParseError(f"PDF stream decompresses beyond the limit ({limits.pdf_max_stream_bytes >> 20} MB): "
                         "refused as a possible decompression bomb") from e
    except (FileNotDecryptedError, DependencyError) as e:
        raise ParseError(f"encrypted PDF: not supported ({e})") from e
    except (PyPdfError, ValueError, KeyError, OSError, TypeError, AttributeError, RecursionError) as e:
        raise ParseError(f"unreadable PDF: {type(e).__name__}: {str(e)[:100]}") from e
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise ParseError("PDF has no extractable text (scanned? run OCR first)")
    return text


def _jsonl_documents(path: Path, text: str, limits: Limits) -> list[Document]:
    docs, first_line = [], {}
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
        try:
            doc = _finish(path, meta, body, is_markdown=True, limits=limits)
        except ParseError as e:
            raise ParseError(f"line {lineno}: {e}") from e
        doc.line = lineno
        key = (doc.id, doc.version)
        if key in first_line:
            raise ParseError(f"line {lineno}: id '{doc.id}' version '{doc.version}' repeats line {first_line[key]} "
                             "(one of them would silently replace the other)")
        first_line[key] = lineno
        docs.append(doc)
    if not docs:
        raise ParseError("no documents in JSONL file")
    return docs


def _scalar(meta: dict, key: str, limits: Limits, *, cut: bool = True) -> str:
    """A metadata field as one line of text. Too long: cut with a warning-free ellipsis when `cut` (titles,
    issuers), refused otherwise (an id or version that changed silently would be another document)."""
    value = meta.get(key)
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float | dt.date):
        raise ParseError(f"{key}: must be text, not {type(value).__name__}")
    text = one_line(value.isoformat() if isinstance(value, dt.date) else str(value))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ParseError(f"{key}: invalid Unicode (a lone surrogate)") from e
    if len(text) > limits.max_field_chars:
        if not cut:
            raise ParseError(f"{key}: {len(text)} characters (at most {limits.max_field_chars}, "
                             "setting files.max_field_chars)")
        return one_line(text, limits.max_field_chars)
    return text


def _published(meta: dict, limits: Limits) -> str:
    """An ISO date that exists and is not in the future (beyond `future_date_days`)."""
    value = meta.get("published")
    if value is None or value == "":
        return ""
    if isinstance(value, dt.datetime):
        date = value.date()
    elif isinstance(value, dt.date):
        date = value
    else:
        written = one_line(str(value), 40)
        try:
            date = dt.datetime.fromisoformat(written).date() if isinstance(value, str) else None
        except ValueError:
            date = None
        if date is None:
            raise ParseError(f"published: {written} is not a date (write YYYY-MM-DD)")
    if date > dt.date.today() + dt.timedelta(days=limits.future_date_days):
        raise ParseError(f"published: {date.isoformat()} is in the future: a guideline is ingested once it is "
                         "published (a future date would make it the live version now)")
    return date.isoformat()


def _topics(meta: dict, limits: Limits) -> list[str]:
    topics = meta.get("topics") or []
    if isinstance(topics, str):
        topics = [t for t in re.split(r"[,，]", topics)]
    if not isinstance(topics, list) or not all(isinstance(t, str | int | float) and not isinstance(t, bool)
                                               for t in topics):
        raise ParseError("topics: must be a list of words or a comma-separated string")
    return [t for t in (one_line(str(t), limits.max_field_chars) for t in topics) if t][:50]


def _finish(path: Path, meta: dict, body: str, *, is_markdown: bool, limits: Limits) -> Document:
    try:
        body.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ParseError(f"invalid Unicode in the text (a lone surrogate at character {e.start})") from e
    body = body.strip()
    if not body:
        raise ParseError("document has no text after its metadata")
    warnings = []
    doc_id = _scalar(meta, "id", limits, cut=False)
    if not doc_id:
        doc_id = re.sub(r"[^\w\-]+", "-", path.stem).strip("-").lower()[:100] or "document"
        warnings.append(f"no 'id': using '{doc_id}' from the file name")
    published = _published(meta, limits)
    version = _scalar(meta, "version", limits, cut=False)
    if not version:
        version = published or dt.date.fromtimestamp(path.stat().st_mtime).isoformat()
        warnings.append(f"no 'version': using '{version}' from the {'published date' if published else 'file date'}")
    title = _scalar(meta, "title", limits)
    if not title:
        heading = re.search(r"^#\s+(.+)$", body, re.MULTILINE)
        title = one_line(heading.group(1), limits.max_field_chars) if heading else doc_id
    language = _scalar(meta, "language", limits, cut=False)[:16] or language_of(body)
    doc = Document(
        id=doc_id, title=title, version=version, text=body, source=str(path),
        issuer=_scalar(meta, "issuer", limits), published=published, language=language,
        topics=_topics(meta, limits), warnings=warnings, is_markdown=is_markdown,
    )
    try:
        doc.content_hash  # noqa: B018 - every field must be storable text
    except UnicodeEncodeError as e:
        raise ParseError("invalid Unicode in the metadata (a lone surrogate)") from e
    return doc
