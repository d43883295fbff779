"""Guideline files for tests: PDFs (with a password or a bomb), the bad-file zoo, the sample index."""

from __future__ import annotations

import os
from pathlib import Path

from medloop.resources import SAMPLE_GUIDELINES as GUIDELINES
from medloop.testing.paths import BAD_GUIDELINES


def write_pdf(path: Path, text: str, *, password: str | None = None, bomb_bytes: int = 0) -> Path:
    """A one-page PDF whose text pypdf extracts. `password`: AES-encrypted with that user password ("" is how
    many publishers ship them: anyone may open, nobody may edit); `bomb_bytes`: the page stream also holds that
    many spaces, flate-compressed (a 300 MB stream is a ~300 kB file)."""
    import zlib

    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
        {NameObject("/F1"): writer._add_object(font)})})
    content = DecodedStreamObject()
    content.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(content)
    if password is not None:
        writer.encrypt(user_password=password, owner_password="owner-" + password, algorithm="AES-128")
    writer.write(path)
    if bomb_bytes:  # append an object whose stream inflates to bomb_bytes, referenced from the page's contents
        compressor, parts = zlib.compressobj(9), []
        for _ in range(bomb_bytes // (1 << 20)):
            parts.append(compressor.compress(b" " * (1 << 20)))
        parts.append(compressor.flush())
        data = b"".join(parts)
        from pypdf import PdfReader
        from pypdf.generic import ArrayObject, StreamObject

        reader = PdfReader(path)
        writer = PdfWriter(clone_from=reader)
        bomb = StreamObject()
        bomb._data = data
        bomb[NameObject("/Filter")] = NameObject("/FlateDecode")
        page = writer.pages[0]
        page[NameObject("/Contents")] = ArrayObject([writer._add_object(bomb), page["/Contents"].indirect_reference])
        writer.write(path)
    return path


def write_bad_guideline_zoo(folder: Path, outside: Path) -> dict[str, str]:
    """Every kind of bad guideline file seen so far, in `folder` (small ones copied from tests/fixtures/, large
    and binary ones written here), and the phrase each one's error must contain. `outside`: a folder beside it
    holding what a symbolic link in `folder` points to."""
    import json
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for f in BAD_GUIDELINES.iterdir():
        if f.name != "expected.json":
            shutil.copy(f, folder / f.name)
    (folder / "deep.jsonl").write_text('{"id": "deep", "text": "t", "x": ' + "[" * 3000 + "]" * 3000 + "}\n")
    write_pdf(folder / "locked.pdf", "Blood pressure text behind a password", password="secret")
    write_pdf(folder / "bomb.pdf", "Blood pressure text", bomb_bytes=300 << 20)
    (folder / "too-large.md").write_text("# Large\n\n" + "blood pressure target " * 30_000)  # ~660 kB
    edition = "---\nid: shared-id\nversion: \"1\"\nlanguage: {}\n---\n# {}\n"
    (folder / "lang-a-zh.md").write_text(edition.format("zh", "指南\n\n血压目标。"))
    (folder / "lang-b-en.md").write_text(edition.format("en", "Guide\n\nTarget."))
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.md").write_text("# Secret\n\nThe service's private notes: do not publish.\n")
    os.symlink(outside / "secret.md", folder / "outside-link.md")
    return json.loads((BAD_GUIDELINES / "expected.json").read_text())


def sample_index(settings, embedder, files: list[Path] | None = None):
    """The sample guidelines (or `files`) ingested and indexed under `settings`' home; a Retriever over them."""
    from medloop.knowledge import KnowledgeStore, ingest_paths
    from medloop.retrieval import Retriever, sync_index

    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, files or [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    return Retriever(settings, store=store, embedder=embedder)
