"""When are two texts the same passage? Exactly, after normalising case, spaces and punctuation, or nearly,
by the Jaccard similarity of their character 4-gram sets. Used to cite a passage once and to keep what
judges an adapter out of what trains it."""

from __future__ import annotations

import re

NEAR_DUPLICATE = 0.85  # Jaccard similarity of character 4-gram sets


def fingerprint(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def shingles(text: str) -> frozenset[str]:
    """Character 4-grams of an already normalised text."""
    return frozenset(text[i:i + 4] for i in range(max(len(text) - 3, 1)))


def near_duplicates(a: frozenset[str], b: frozenset[str], threshold: float = NEAR_DUPLICATE) -> bool:
    small, large = sorted((len(a), len(b)))
    if small < threshold * large:  # the Jaccard similarity is at most small/large: no need to intersect
        return False
    common = len(a & b)
    return common >= threshold * (small + large - common)
