"""The terms a guideline gives in two languages: a Chinese guideline names the English term or abbreviation of
what it introduces in parentheses ("别嘌醇（allopurinol）", "降尿酸治疗（urate-lowering therapy, ULT）"), which
bridges a question in one language to a guideline in the other for exactly the words this corpus uses."""

from __future__ import annotations

import re

from medloop.knowledge.language import CJK_RANGES

MAX_CHINESE = 8  # characters of the run before the parenthesis that may belong to the term
PAIR = re.compile(rf"([{CJK_RANGES}]{{2,}})\s*[（(]\s*([A-Za-z][^（()）\n{CJK_RANGES}]{{0,80}}?)\s*[)）]")
NAME = re.compile(r"[A-Za-z].*[A-Za-z0-9]|[A-Za-z0-9].*[A-Za-z]")  # two characters, one a letter: "L-T4", "gout"


def bilingual_terms(text: str) -> list[tuple[str, str]]:
    """(the Chinese run ending at the parenthesis, at most MAX_CHINESE characters; one English name given in it),
    in the order found, each pair once. Where the Chinese term starts is left to the reader (see
    `retrieval.dictionary.Bridge`): the run may hold words before it ("可选小剂量秋水仙碱")."""
    pairs: dict[tuple[str, str], None] = {}
    for match in PAIR.finditer(text):
        chinese = match.group(1)[-MAX_CHINESE:]
        for english in re.split(r"[,;，；]", match.group(2)):
            english = english.strip(" .:")
            if NAME.search(english) and len(english) <= 60:
                pairs[(chinese, english)] = None
    return list(pairs)
