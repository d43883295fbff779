"""The bilingual medical lexicon: a question's term found here stands for its whole concept line.

Terms are matched as written: Chinese ones as substrings of the question, others as runs of stemmed words
("high blood pressures" finds "high blood pressure"). Longer terms win, and a matched span is used once,
so "2型糖尿病" is one concept, not also "糖尿病".

A name written with a leading "-" is a word ending, as drug classes are named by their INN stems: "-olol" and
"-洛尔" are β-blockers. A word ending so names the class ("nebivolol", "amlodipine" for "-dipine", one the lexicon
has never seen), and so does a name on another line ("bisoprolol", "比索洛尔": the drug's line and its class's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from medloop.knowledge.language import CJK
from medloop.retrieval.tokenize import CJK_RUN, WORD, bigrams, english_token

ENGLISH_WORD = re.compile(r"[a-z0-9]+")

Form = tuple[str, ...]  # the tokens a passage must hold to contain one way of saying a concept


@dataclass(frozen=True)
class Term:
    text: str  # as written, lower case
    tokens: Form
    groups: tuple[int, ...]  # the concept lines it belongs to ("心梗": myocardial infarction and ACS)


class Lexicon:
    def __init__(self, sources: dict[str, list[str]]):
        """`sources`: file name -> its lines."""
        self.groups: list[tuple[Form, ...]] = []
        self.stems: list[tuple[str, int]] = []  # (a word ending, its concept line)
        terms: list[Term] = []
        numbered = [(source, n, line) for source, lines in sources.items() for n, line in enumerate(lines, 1)]
        for source, number, line in numbered:
            line = "" if line.lstrip().startswith("#") else line.strip()
            if not line:
                continue
            names = [n.strip().lower() for n in line.split("|") if n.strip()]
            if len(names) < 2:
                raise ValueError(f"{source}:{number}: a concept line needs at least two names separated by ' | '")
            forms = []
            for name in names:
                if name.startswith("-"):
                    name = name[1:]
                    self.stems.append((name, len(self.groups)))
                    if not CJK.search(name):
                        continue  # an English ending is no word a passage holds; a Chinese one is its characters
                tokens = form_of(name)
                if tokens:
                    terms.append(Term(name, tokens, (len(self.groups),)))
                    forms.append(tokens)
            self.groups.append(tuple(dict.fromkeys(forms)))
        merged: dict[str, Term] = {}
        for t in terms:
            seen = merged.get(t.text)
            groups = (seen.groups if seen else ()) + t.groups
            groups += tuple(g for stem, g in self.stems if t.text.endswith(stem) and t.text != stem and g not in groups)
            merged[t.text] = Term(t.text, t.tokens, groups)
        self._texts = set(merged)
        # Longest first: a longer term is the more specific reading of the same words.
        self.terms = sorted(merged.values(), key=lambda t: (-len(t.text), t.text))

    @classmethod
    def load(cls, extra: Path | None = None) -> Lexicon:
        builtin = resources.files("medloop").joinpath("data/medical_lexicon.txt")
        sources = {str(builtin): builtin.read_text("utf-8").splitlines()}
        if extra is not None:
            sources[str(extra)] = extra.read_text("utf-8").splitlines()
        return cls(sources)

    def knows(self, text: str) -> bool:
        return text.lower() in self._texts

    def groups_of(self, term: str) -> tuple[int, ...]:
        """The concept lines a term (as written in the lexicon) belongs to; () for a word it does not know."""
        return next((t.groups for t in self.terms if t.text == term.lower()), ())

    def longest_inside(self, word: str) -> str | None:
        """The longest Chinese lexicon name inside `word`, if any."""
        return next((t.text for t in self.terms if CJK.search(t.text) and t.text in word), None)

    def find(self, question: str) -> tuple[list[tuple[tuple[int, ...], str]], str]:
        """([(the concept lines a name in the question belongs to, the name as written)], the question with those
        names blanked out). A name on two lines ("心梗": myocardial infarction, ACS) is one concept with both
        lines' forms."""
        text = question.lower()
        words = [(m, t) for m in ENGLISH_WORD.finditer(text) if (t := english_token(m.group()))]
        used = [False] * len(words)
        blank: list[tuple[int, int]] = []
        found: list[tuple[tuple[int, ...], str]] = []
        for term in self.terms:
            if CJK.search(term.text):
                if term.text in text:
                    start = text.index(term.text)
                    found.append((term.groups, question[start : start + len(term.text)]))
                    text = text.replace(term.text, " " * len(term.text))  # same length: spans stay valid
                continue
            n = len(term.tokens)
            for i in range(len(words) - n + 1):
                if not any(used[i : i + n]) and tuple(s for _, s in words[i : i + n]) == term.tokens:
                    used[i : i + n] = [True] * n
                    start, end = words[i][0].start(), words[i + n - 1][0].end()
                    blank.append((start, end))
                    found.append((term.groups, question[start:end]))
                    break
        for i, (m, _) in enumerate(words):
            if used[i]:
                continue
            stems = tuple(g for stem, g in self.stems if m.group().endswith(stem) and len(m.group()) > len(stem) + 1)
            if stems:  # a drug the lexicon does not know, named by its class's INN stem
                blank.append((m.start(), m.end()))
                found.append((stems, question[m.start():m.end()]))
        for start, end in blank:
            text = text[:start] + " " * (end - start) + text[end:]
        return list({groups: (groups, name) for groups, name in found}.values()), text


def form_of(name: str) -> Form:
    """The tokens a passage holds when it says `name`: stems of its words, bigrams of its Chinese (jieba may
    segment the passage otherwise, the bigrams are there whatever it does)."""
    tokens: list[str] = []
    for piece in WORD.findall(name.lower()):
        runs = CJK_RUN.findall(piece)
        tokens += [b for run in runs for b in (bigrams(run) or [run])]
        tokens += [t for w in CJK_RUN.split(piece) if (t := english_token(w))]
    return tuple(tokens)


@lru_cache(maxsize=4)
def lexicon(extra: str | None = None) -> Lexicon:
    return Lexicon.load(Path(extra) if extra else None)
