"""One rule for "is this Chinese?", used by parsing, chunking, sparse tokens and the evidence block."""

from __future__ import annotations

import re

CJK_RANGES = "\u3400-\u9fff\uf900-\ufaff"  # CJK unified ideographs (+ extension A, compatibility)
CJK = re.compile(f"[{CJK_RANGES}]")


def is_chinese(text: str) -> bool:
    """Chinese when CJK characters are at least a fifth of the letters (code-mixed text such as
    "HbA1c 控制目标" counts as Chinese)."""
    cjk = len(CJK.findall(text))
    return cjk > 0 and cjk >= 0.2 * sum(c.isalpha() for c in text)


def language_of(text: str) -> str:
    return "zh" if is_chinese(text[:2000]) else "en"
