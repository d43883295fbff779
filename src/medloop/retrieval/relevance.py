"""Does a passage answer the question? A score in [0, 1], independent of corpus size.

The question is read as concepts: names from the bilingual lexicon (each with all its synonyms, in both
languages) and the remaining informative words, each with its names in the other language from the bridge (the
corpus's own bilingual terms, then the dictionary). A concept counts as found in a passage when any of its forms
is there; a Chinese word earns the share of its character bigrams found. Each concept weighs its inverse
document frequency, so "高血压" found and "香蕉" missing scores low, while the question's phrasing (stop words)
weighs nothing. The score is the found weight over the total: the share of what the question is about that the
passage covers. With the embedder's cosine it makes a hit's evidence (`retriever.evidence`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import jieba
import jieba.posseg

from medloop.retrieval.bm25 import idf
from medloop.retrieval.dictionary import Bridge, dictionary, rarity
from medloop.retrieval.lexicon import ENGLISH_WORD, Form, Lexicon, form_of
from medloop.retrieval.tokenize import CJK_RUN, STOPWORDS, bigrams, english_token, tokenize

# A word outside the lexicon counts at its rarity (`dictionary.rarity`) x its IDF; Chinese function words (jieba
# tags: pronouns, adverbs, particles, numerals...) not at all, unless rare in everyday text: jieba's tag for a
# medical word it hardly knows is a guess.
CONTENT_TAGS = set("nvalstiz")


@dataclass(frozen=True)
class Concept:
    text: str  # how the question put it, for explanations
    forms: tuple[Form, ...]
    partial: bool = False  # a Chinese word of the question: its own form (the first) earns the share of its bigrams
    weight: float = 1.0  # of its IDF: 1 for a lexicon concept, less for a word the lexicon does not know

    def found(self, tokens: set[str]) -> float:
        """1 when a passage holds any form whole, else (for a partial concept) the share of its own bigrams found."""
        if any(all(t in tokens for t in form) for form in self.forms):
            return 1.0
        return sum(t in tokens for t in self.forms[0]) / len(self.forms[0]) if self.partial else 0.0


@dataclass(frozen=True)
class Query:
    text: str
    concepts: tuple[Concept, ...]
    sparse_tokens: tuple[str, ...]  # BM25 query: the question's tokens and every form of its lexicon concepts


def analyse(question: str, lexicon: Lexicon, bridge: Bridge | None = None) -> Query:
    """`bridge` gives each word outside the lexicon its names in the other language as further forms: the
    corpus's own bilingual terms and the dictionary (the plain dictionary when none is given)."""
    bridge = bridge or Bridge(dictionary())
    groups, rest = lexicon.find(question)
    concepts = []
    for line_ids, written in groups:
        # The name as written first: a drug known by its class's stem ("amlodipine") is found as itself too.
        forms = tuple(dict.fromkeys(f for f in (form_of(written), *(f for g in line_ids for f in lexicon.groups[g]))
                                    if f))
        concepts.append(Concept(" ".join(forms[0]), forms))
    for run in CJK_RUN.findall(rest):
        for word, tag in _words(run, bridge):
            function_word = tag[:1] not in CONTENT_TAGS and rarity(word) < 1.0  # jieba tags "痛经" an adverb
            if len(word) < 2 or word in STOPWORDS or function_word or _a_name(word, tag):
                continue  # a leftover character or a function word is phrasing, not topic
            own = tuple(bigrams(word))
            concepts.append(Concept(word, (own, *bridge.senses_within(word)), partial=True, weight=rarity(word)))
    concepts += _compounds(question, lexicon)
    concepts += _english(CJK_RUN.sub(" ", rest), bridge)
    sparse = list(tokenize(question))
    sparse += [t for c in concepts for form in c.forms for t in form]
    return Query(question, tuple(dict.fromkeys(concepts)), tuple(dict.fromkeys(sparse)))


def _words(run: str, bridge: Bridge) -> list[tuple[str, str]]:
    """jieba's words and tags, except that a longer dictionary word is kept whole: jieba splits "骨质疏松" and
    "心房颤动", whose halves translate to nothing."""
    out, i, rest = [], 0, ""
    while i < len(run):
        word = bridge.longest_at(run, i)
        if word:
            out += jieba.posseg.lcut(rest) if rest else []
            out.append((word, "n"))
            rest, i = "", i + len(word)
        else:
            rest, i = rest + run[i], i + 1
    return out + (jieba.posseg.lcut(rest) if rest else [])


BINOMIAL = re.compile(r"\b([a-z])\.\s*([a-z]{3,})\b")  # "h. pylori", "e. coli": the genus by its initial


def _english(text: str, bridge: Bridge) -> list[Concept]:
    """The question's English words outside the lexicon, a phrase the dictionary knows ("atrial fibrillation")
    as one concept, each with its Chinese names as further forms."""
    text = BINOMIAL.sub(lambda m: bridge.dictionary.binomial(m[1], m[2]) or m[0], text)
    words = [m.group() for m in ENGLISH_WORD.finditer(text) if not m.group().isdigit()]  # numbers: the answer's
    concepts, i = [], 0
    while i < len(words):
        for n in range(min(bridge.longest_phrase, len(words) - i), 1, -1):
            phrase = tuple(words[i:i + n])
            chinese = bridge.words(phrase)
            form = form_of(" ".join(phrase))
            if chinese and len(form) > 1:
                concepts.append(_translated(" ".join(phrase), form, chinese, max(rarity(w) for w in phrase)))
                i += n
                break
        else:
            token = english_token(words[i])
            if token:
                concepts.append(_translated(words[i], (token,), bridge.words((words[i],)), rarity(words[i])))
            i += 1
    return list(dict.fromkeys(concepts))


def _translated(text: str, form: Form, chinese: tuple[str, ...], weight: float) -> Concept:
    """A translation counts whole only: half of "偏头痛" (migraine) is "头痛" (headache)."""
    return Concept(text, (form, *(form_of(c) for c in chinese)), weight=weight)


# jieba tags names "nr", but also some phrases ("喝咖啡"): a name is an nr word that starts with a common surname.
SURNAMES = set("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕"
               "丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")


def _a_name(word: str, tag: str) -> bool:
    """A person's name in the question ("患者张三") is who asks, never what about."""
    return tag.startswith("nr") and word[0] in SURNAMES and len(word) <= 3


def _compounds(question: str, lexicon: Lexicon) -> list[Concept]:
    """A word that merely contains a lexicon name ("血压计" holds "血压", "糖尿病足" holds "糖尿病") is a topic
    of its own: it joins the question as an unknown word, so the bare name does not carry the question alone."""
    out = []
    for word in jieba.lcut(question.lower()):
        if len(word) < 3 or not CJK_RUN.fullmatch(word) or lexicon.knows(word):
            continue
        inner = lexicon.longest_inside(word)
        if inner and word.replace(inner, "", 1) not in STOPWORDS:
            # Whole or nothing: half of "血压计" is always found wherever "血压" is.
            out.append(Concept(word, (tuple(bigrams(word)),), weight=rarity(word)))
    return out


def concept_weights(query: Query, df: Callable[[str], int], n_docs: int) -> list[float]:
    """A concept is as common as its most common form; a form as rare as its rarest token."""
    return [idf(max(min(df(t) for t in form) for form in c.forms), n_docs) * c.weight for c in query.concepts]


def relevance(query: Query, tokens: set[str], weights: list[float]) -> float:
    total = sum(weights)
    if not total:
        return 0.0
    return sum(w * c.found(tokens) for c, w in zip(query.concepts, weights, strict=True)) / total

