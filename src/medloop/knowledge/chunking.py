"""Structure-following chunks: sections by heading, then paragraphs, then sentences.

Sizes are counted in "units": one CJK character or one Latin word each, so that a Chinese and an
English chunk of the same size carry about the same amount of text (and of tokens). A `Chunker` is the rule and its
sizes; its `signature` is stored with every document, so that a change of either re-chunks a document the next time
it is ingested, or at once with `medloop index rechunk`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from medloop.knowledge.language import CJK_RANGES
from medloop.knowledge.parsing import one_line

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
UNIT = re.compile(f"[{CJK_RANGES}]|[^\\s{CJK_RANGES}]+")
SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=[.])\s+")


VERSION = 2  # bump when the rule changes: stored documents are re-chunked (2: section names made one line)


@dataclass
class Chunk:
    section: str
    text: str


class Chunker(BaseModel):
    """How guideline text is cut into chunks (another size re-chunks what is stored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(360, ge=20, description="chunk size in units: one CJK character or one word each")
    overlap: int = Field(40, ge=0, description="overlap between neighbouring chunks, same units")

    @property
    def signature(self) -> str:
        return f"v{VERSION}/{self.size}/{self.overlap}"

    def __call__(self, text: str, is_markdown: bool = True) -> list[Chunk]:
        return chunk_text(text, max_units=self.size, overlap=self.overlap, is_markdown=is_markdown)


def units(text: str) -> int:
    return len(UNIT.findall(text))


def _sections(text: str, is_markdown: bool) -> list[tuple[str, str]]:
    """(heading path, body) pairs in document order."""
    if not is_markdown:
        return [("", text)]
    path: list[str] = []
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        m = HEADING.match(line)
        if m:
            level = len(m.group(1))
            path = path[: level - 1] + [one_line(m.group(2), 120)]  # a section is cited: one line
            # The document title (a lone H1) is not a useful section name for citations.
            out.append((" > ".join(p for i, p in enumerate(path) if i > 0 or level == 1), []))
        else:
            out[-1][1].append(line)
    return [(head, "\n".join(body).strip()) for head, body in out if "\n".join(body).strip()]


def _pieces(body: str, max_units: int) -> list[str]:
    """Paragraphs, with over-long ones split at sentence ends (and hard-split as a last resort)."""
    pieces = []
    for para in re.split(r"\n\s*\n", body):
        para = para.strip()
        if not para:
            continue
        if units(para) <= max_units:
            pieces.append(para)
            continue
        for sentence in (s.strip() for s in SENTENCE_END.split(para)):
            while sentence:
                if units(sentence) <= max_units:
                    pieces.append(sentence)
                    break
                cut = UNIT.finditer(sentence)
                end = [m.end() for _, m in zip(range(max_units), cut, strict=False)][-1]
                pieces.append(sentence[:end])
                sentence = sentence[end:].strip()
    return pieces


def chunk_text(text: str, *, max_units: int, overlap: int,
               is_markdown: bool = True) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section, body in _sections(text, is_markdown):
        current: list[str] = []
        size = 0
        for piece in _pieces(body, max_units):
            n = units(piece)
            if current and size + n > max_units:
                chunks.append(Chunk(section, "\n".join(current)))
                # Overlap: carry the trailing pieces that fit into `overlap` units.
                carry, carried = [], 0
                for prev in reversed(current):
                    if carried + units(prev) > overlap:
                        break
                    carry.insert(0, prev)
                    carried += units(prev)
                current, size = carry, carried
            current.append(piece)
            size += n
        if current:
            chunks.append(Chunk(section, "\n".join(current)))
    return chunks
