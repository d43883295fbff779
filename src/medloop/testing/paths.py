"""Where a source checkout keeps what the tests read: the real Qwen3 tokenizer, SFT layouts, month suites, bad files."""

from __future__ import annotations

import os
from pathlib import Path


def checkout() -> Path:
    """The medloop source checkout whose tests/fixtures and scripts/ these helpers read: `MEDLOOP_CHECKOUT`, else
    the nearest folder holding both, above the working directory or above this file (an editable install); the
    working directory when there is none, so that a helper that needs a fixture names the path it looked for."""
    if os.environ.get("MEDLOOP_CHECKOUT"):
        return Path(os.environ["MEDLOOP_CHECKOUT"]).resolve()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / "tests" / "fixtures").is_dir() and (folder / "scripts").is_dir():
                return folder
    return Path.cwd()


REPO = checkout()
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER = FIXTURES / "qwen3-tokenizer"  # the real Qwen3 tokenizer (Apache-2.0, see its SOURCE.md)
SFT = FIXTURES / "sft"  # the same 8 medical Q&A pairs in the three SFT layouts
SABOTAGE = FIXTURES / "sabotage" / "months.json"  # months that a promotion gate must tell apart
BAD_GUIDELINES = FIXTURES / "bad_guidelines"  # small bad files, and expected.json: file -> a phrase of its error
FRESH_MONTHS = FIXTURES / "fresh_months" / "months.json"  # written after the gate's rules were frozen
THIRD_MONTHS = FIXTURES / "fresh_months" / "third_set.json"  # written after the fresh months changed two rules
