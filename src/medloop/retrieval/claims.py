"""What a clause claims, read the same way in any language: its values, the drugs and classes it names, who or
what measurement a value is about, and its topic, as lexicon concepts.

A value is a number with its unit and its direction ("<140/90 mmHg", "140/90 mmHg以下", "below 140/90" are one
claim; "≥140/90" another: a diagnostic threshold is not a treatment target). Names and qualifiers are lexicon
concepts the curated list `data/claim_terms.txt` marks (drugs, classes and procedures; populations and measurement
contexts such as the elderly or fasting glucose), so "利尿剂" and "a diuretic" are one name. The stale-answer check
and the gate's data check both compare answers with guideline clauses through this reading, never through words,
which is what lets an English answer be checked against a Chinese guideline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import cn2an
from text_to_num import alpha2digit

from medloop.knowledge.language import is_chinese
from medloop.retrieval.lexicon import Lexicon

UNITS = {
    "mmhg": "mmHg", "毫米汞柱": "mmHg", "%": "%",
    "mmol/l": "mmol/L", "μmol/l": "umol/L", "umol/l": "umol/L", "mg/dl": "mg/dL",
    "miu/l": "mIU/L", "mg": "mg", "μg": "ug", "ug": "ug", "mcg": "ug", "ml": "mL", "iu": "IU",
    "小时": "h", "h": "h", "hour": "h", "hours": "h", "周": "wk", "week": "wk", "weeks": "wk",
    "个月": "mo", "month": "mo", "months": "mo", "天": "d", "day": "d", "days": "d", "分钟": "min",
    "minute": "min", "minutes": "min", "min": "min", "岁": "y", "年": "y", "years": "y", "year": "y",
}
# A blood pressure said aloud: "140 over 90" (two- or three-digit numbers only: "3 over 4 weeks" is no pair).
SPOKEN_PAIR = r"(?<![\d.])\d{2,3}\s+over\s+\d{2,3}(?![\d.])"
PAIR = re.compile(rf"\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?|{SPOKEN_PAIR}", re.IGNORECASE)
NUMBER = re.compile(
    rf"(?P<num>{SPOKEN_PAIR}|\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)\s*"
    r"(?P<unit>mm\s?Hg|毫米汞柱|%|mmol/L|[μu]mol/L|mg/dL|mIU/L|(?:mg|[μu]g|mcg|mL|IU|h)(?![A-Za-z])|小时|周|个月|天|分钟|岁|年|"
    r"hours?|weeks?|months?|days?|minutes?|min|years?)?",
    re.IGNORECASE,
)
# A direction written before the number, or after it (Chinese puts 以下/以上 after the value).
BELOW_BEFORE = re.compile(r"(?:[<＜≤]|低于|小于|不超过|不高于|below|under|less than|lower than|at most|no more than|"
                          r"within|up to|no higher than|not (?:exceed|go above|be above)|(?:does|do|did)(?:n't| not) "
                          r"(?:exceed|go above))\s*=?\s*$", re.IGNORECASE)
ABOVE_BEFORE = re.compile(r"(?:[>＞≥]|高于|大于|超过|至少|不低于|above|over|more than|greater than|at least|exceeding)"
                          r"\s*=?\s*$", re.IGNORECASE)
BELOW_AFTER = re.compile(r"^\s*(?:以下|下面|之下|以内|之内|内|or less|or lower|or below)", re.IGNORECASE)
ABOVE_AFTER = re.compile(r"^\s*(?:以上|及以上|上面|之上|or more|or higher|or above|and above|or older)", re.IGNORECASE)
# A blood pressure written as its two parts ("收缩压<140，舒张压<90 mmHg", "高压140低压90", "systolic below 140 and
# diastolic below 90 mmHg") is the one claim "<140/90 mmHg": each part is mmHg even where only the second says so.
# A part is named a few words before its number: "systolic pressure below 140", "the top number under 140".
SYSTOLIC = re.compile(r"(?:收缩压|高压|systolic|SBP|(?:top|upper) number)\D{0,50}$", re.IGNORECASE)
DIASTOLIC = re.compile(r"(?:舒张压|低压|diastolic|DBP|(?:bottom|lower) number)\D{0,50}$", re.IGNORECASE)
SYSTOLIC_AFTER = re.compile(r"^\s*(?:mm\s?Hg\s*)?(?:systolic|收缩压)", re.IGNORECASE)  # "less than 140 systolic"
DIASTOLIC_AFTER = re.compile(r"^\s*(?:mm\s?Hg\s*)?(?:diastolic|舒张压)", re.IGNORECASE)
PART_READ = 60  # characters before a number searched for the part it gives (no other number between them)
# A value called a target with no direction ("目标是140/90", "140/90 mmHg是目标上限", "a goal of 140/90") is a
# ceiling, as treatment targets are; read so, it is not the live diagnostic threshold "≥140/90".
TARGET = re.compile(r"目标|达标|控制在|target|goal|\baim", re.IGNORECASE)
PHRASE = re.compile(r"[，,；;、]")
PAIR_GAP = 40  # characters from the end of the systolic part to the diastolic number
CLAUSE = re.compile(r"[。；;！？!?\n]|\.(?=\s|$)")
# Alternatives within a clause ("随机血糖≥11.1，或空腹血糖≥7.0"): a qualifier holds for the values of its own part.
ALTERNATIVE = re.compile(r"[，,]\s*(?:或者?|or\b)|、|或者")
TERMS = "data/claim_terms.txt"


@dataclass(frozen=True)
class Value:
    number: str  # "140/90", "7" ("7.0" and "7" are one number)
    unit: str  # mmHg, %, mmol/L, umol/L, mg/dL, mIU/L, mg, ug, mL, IU, h, wk, mo, d, min, y
    direction: str  # "below", "above", or "" when the text gives none
    text: str  # as written
    at: int = 0  # where in the text it starts

    def matches(self, other: Value) -> bool:
        """The same claim: number and unit, and the direction where both give one. A systolic or diastolic value
        alone is part of a pair that gives it in the same place ("≥140 mmHg" systolic is in "≥140/90 mmHg")."""
        if self.unit != other.unit or (self.direction and other.direction and self.direction != other.direction):
            return False
        if self.number == other.number:
            return True
        mine, theirs = self.number.split("/"), other.number.split("/")
        if len(mine) == len(theirs):
            return False
        pair, single = (mine, theirs[0]) if len(mine) == 2 else (theirs, mine[0])
        return single in pair


# Chinese numerals that are a value: before a unit or either side of a pair's slash ("六个月", "一百四十/九十"), or
# a percentage ("百分之七"); "一般", "一线" and "单一" stay words.
CN_NUMERAL = "[零一二两三四五六七八九十百千点]+"
CN_VALUE = re.compile(rf"{CN_NUMERAL}(?=\s*(?:/|毫米汞柱|mmHg|个月|周|天|小时|分钟|岁|年|毫克|mg))|(?<=/){CN_NUMERAL}")
CN_PERCENT = re.compile(rf"百分之({CN_NUMERAL})")


def digits(text: str) -> str:
    """Numbers written in words as digits, where they can be values: "疗程不超过六个月", "一百四十/九十毫米汞柱",
    "for twelve months", "one hundred forty over ninety" (cn2an; text2num, which leaves a lone small number such
    as "type two" a word)."""
    text = CN_PERCENT.sub(lambda m: _cn_number(m[1]) + "%", text)
    text = CN_VALUE.sub(lambda m: _cn_number(m[0]), text)
    return alpha2digit(text, "en") if re.search("[A-Za-z]", text) else text


def _cn_number(numeral: str) -> str:
    try:
        return str(cn2an.cn2an(numeral, "smart"))
    except ValueError:  # not a number after all ("十百")
        return numeral


def values(text: str) -> list[Value]:
    text = digits(text)
    out, systolic = [], None  # systolic: the last systolic part read, and where it ends
    for m in NUMBER.finditer(text):
        parts = re.split(r"\s*/\s*|\s+over\s+", m["num"].strip(), flags=re.IGNORECASE)
        number = "/".join(p.rstrip("0").rstrip(".") if "." in p else p for p in parts)
        unit = UNITS.get(re.sub(r"\s+", "", m["unit"] or "").lower(), "")
        before, after = text[max(0, m.start() - 24):m.start()], text[m.end():m.end() + 10]
        reading, named_after = text[max(0, m.start() - PART_READ):m.start()], text[m.end():m.end() + 16]
        part = "" if "/" in number else \
            "diastolic" if DIASTOLIC.search(reading) or DIASTOLIC_AFTER.search(named_after) else \
            "systolic" if SYSTOLIC.search(reading) or SYSTOLIC_AFTER.search(named_after) else ""
        if ("/" in number and all(len(p) >= 2 for p in parts)) or part:
            unit = "mmHg"  # a systolic/diastolic pair ("1/3" is none), or one of its parts
        if not unit or (unit == "y" and len(number) == 4):
            continue  # a bare number ("2型", "12-lead") is not a claim, nor a year ("2019年版")
        below, above = BELOW_BEFORE.search(before), ABOVE_BEFORE.search(before)
        direction = "below" if below or BELOW_AFTER.search(after) else \
            "above" if above or ABOVE_AFTER.search(after) else "below" if _a_target(text, m) else ""
        symbol = (below or above).group().strip() if below or above else ""
        written = (symbol if len(symbol) <= 2 else "") + text[m.start():m.end()].strip()  # "<140/90 mmHg"
        value = Value(number, unit, direction, written, m.start())
        if part == "diastolic" and systolic and m.start() - systolic[1] <= PAIR_GAP \
                and (not direction or not systolic[0].direction or direction == systolic[0].direction):
            first = out.pop()  # the systolic part: both are one pair, in the direction either gives
            value = Value(f"{first.number}/{number}", unit, direction or first.direction,
                          f"{first.text.removesuffix('mmHg').strip()}/{number} mmHg", first.at)
        systolic = (value, m.end()) if part == "systolic" else None
        out.append(value)
    return out


def _a_target(text: str, m: re.Match) -> bool:
    """Is the value at `m` called a target in its own phrase (up to the nearest comma either side)?"""
    before = PHRASE.split(text[:m.start()])[-1][-40:]
    after = PHRASE.split(text[m.end():m.end() + 16])[0]
    return bool(TARGET.search(before) or TARGET.search(after))


# "elderly patients included", "including the elderly", "老年人也是一样": a value that holds for them too, not only.
INCLUDED_BEFORE = re.compile(r"(?:including|even|包括|连)\s*(?:the\s*)?$", re.IGNORECASE)
INCLUDED_AFTER = re.compile(r"^\S{0,6}?\s*(?:patients\s*|people\s*)?(?:included|too|as well|也|同样|一样)",
                            re.IGNORECASE)


def _included(text: str, at: int, length: int) -> bool:
    return bool(INCLUDED_BEFORE.search(text[max(0, at - 16):at]) or INCLUDED_AFTER.search(text[at + length:]))


def clauses(text: str) -> list[str]:
    return [c.strip() for c in CLAUSE.split(text) if c.strip()]


@dataclass(frozen=True)
class Vocabulary:
    """The lexicon, with the concept lines the curated list marks as names or qualifiers."""

    lexicon: Lexicon
    names: frozenset[int]  # lexicon line numbers (groups)
    qualifiers: frozenset[int]

    @classmethod
    def of(cls, lexicon: Lexicon) -> Vocabulary:
        names, qualifiers = set(), set()
        text = resources.files("medloop").joinpath(TERMS).read_text("utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            kind, _, term = (p.strip() for p in line.partition(":"))
            groups = lexicon.groups_of(term)
            if kind not in {"name", "qualifier"} or not groups:
                raise ValueError(f"{TERMS}:{number}: expected 'name: TERM' or 'qualifier: TERM' with a lexicon term")
            (names if kind == "name" else qualifiers).update(groups)
        return cls(lexicon, frozenset(names), frozenset(qualifiers))


@lru_cache(maxsize=8)
def vocabulary(lexicon: Lexicon) -> Vocabulary:
    return Vocabulary.of(lexicon)


@dataclass(frozen=True, eq=False)
class Reading:
    """A clause read for its claims."""

    text: str
    values: tuple[tuple[Value, frozenset[int]], ...]  # each value with the qualifiers of its part of the clause
    names: dict  # concept (lexicon groups) -> the name as written
    qualifiers: frozenset[int]  # who or what measurement the clause is about
    concepts: frozenset[int]  # every lexicon concept it mentions (its topic)
    chunk: object = None  # the guideline chunk it comes from (a ChunkRecord), None for an answer

    def states(self, value: Value, about: frozenset[int] | None = None) -> bool:
        """Does this clause give `value`? With `about` (the qualifiers of an answer's claim): for something the
        claim is about too; a target this clause gives for the elderly does not support a claim about every
        patient."""
        return any(value.matches(v) and (about is None or q <= about) for v, q in self.values)

    def names_concept(self, concept: frozenset[int]) -> bool:
        return any(concept & groups for groups in self.names)


def _unpaired(text: str) -> str:
    """The text with each blood pressure pair blanked, for finding concepts: the "80" of "130/80" is no age."""
    return PAIR.sub(lambda m: " " * len(m.group()), text)


def read(text: str, vocab: Vocabulary, chunk=None) -> Reading:
    text = digits(text)  # once, so that where a value is and where a qualifier is are read in one text
    found, _ = vocab.lexicon.find(_unpaired(text))
    concepts = frozenset(g for groups, _ in found for g in groups)
    names = {frozenset(groups): written for groups, written in found if set(groups) & vocab.names}
    claimed = []
    for part in ALTERNATIVE.split(text):
        bare = _unpaired(part)
        marks = [(at, groups) for groups, written in vocab.lexicon.find(bare)[0]
                 if set(groups) & vocab.qualifiers and not _included(bare, at := bare.find(written), len(written))]
        for v in values(part):
            # A value is for what is named before it in its part ("家庭血压监测（≥135/85）和动态血压监测": home
            # readings), or, when nothing is and the part is English, for what follows ("<150/90 mmHg for
            # patients aged 80 or older"); Chinese names whom a value is for first ("...不超过100 mg，肾功能不全者从
            # 每日50 mg开始": the 100 mg is everyone's).
            before = [groups for at, groups in marks if at < v.at]
            after = [] if is_chinese(part) else [groups for at, groups in marks if at > v.at][:1]
            scope = before[-1:] or after
            claimed.append((v, frozenset(g for groups in scope for g in groups if g in vocab.qualifiers)))
    qualifiers = frozenset(g for groups, _ in found for g in groups if g in vocab.qualifiers)
    return Reading(text, tuple(claimed), names, qualifiers, concepts, chunk)


def read_all(text: str, vocab: Vocabulary, chunk=None) -> list[Reading]:
    return [read(c, vocab, chunk) for c in clauses(text)]
