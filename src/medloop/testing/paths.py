"""Where a source checkout keeps what the tests read: the real Qwen3 tokenizer, SFT layouts, month suites, bad files."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]  # src/medloop/testing/paths.py
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER = FIXTURES / "qwen3-tokenizer"  # the real Qwen3 tokenizer (Apache-2.0, see its SOURCE.md)
SFT = FIXTURES / "sft"  # the same 8 medical Q&A pairs in the three SFT layouts
SABOTAGE = FIXTURES / "sabotage" / "months.json"  # months that a promotion gate must tell apart
BAD_GUIDELINES = FIXTURES / "bad_guidelines"  # small bad files, and expected.json: file -> a phrase of its error
FRESH_MONTHS = FIXTURES / "fresh_months" / "months.json"  # written after the gate's rules were frozen
THIRD_MONTHS = FIXTURES / "fresh_months" / "third_set.json"  # written after the fresh months changed two rules
