"""Does a passage answer the question? A calibrated score in [0, 1], independent of corpus size.

The question is read as concepts: names from the bilingual lexicon (each with all its synonyms, in both
languages) and the remaining informative words. A concept counts as found in a passage when any of its forms
is there; a Chinese word outside the lexicon earns the share of its character bigrams found. Each concept
weighs its inverse document frequency, so "高血压" found and "香蕉" missing scores low, while the question's
phrasing (stop words) weighs nothing. The score is the found weight over the total: the share of what the
question is about that the passage covers. Its threshold (`min_relevance`) is calibrated on the labelled dev
set by `medloop eval retrieval --calibrate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jieba
import jieba.posseg
from wordfreq import zipf_frequency

from medloop.retrieval.bm25 import idf
from medloop.retrieval.lexicon import ENGLISH_WORD, Form, Lexicon
from medloop.retrieval.tokenize import CJK_RUN, STOPWORDS, bigrams, english_token, tokenize

# A word outside the lexicon may be the topic ("香蕉", "骨折", "sunscreen") or the phrasing ("会不会", "注意",
# "reasonable"). General-language frequency tells them apart: the rarer a word in everyday text (wordfreq's
# Zipf scale: 7 for "the", 3 for "sunscreen"), the likelier it is the topic. An unknown word counts at
# its rarity x its IDF; Chinese function words (jieba tags: pronouns, adverbs, particles, numerals...) not at
# all. Calibrated on the dev set (a sweep of both bounds; the widest threshold gap at the best cited recall).
COMMON_ZIPF, RARE_ZIPF = 6.0, 3.5  # rarity 0 at or above the first, 1 at or below the second
CONTENT_TAGS = set("nvalstiz")


def rarity(word: str) -> float:
    zipf = zipf_frequency(word, "zh" if CJK_RUN.search(word) else "en")
    return min(1.0, max(0.0, (COMMON_ZIPF - zipf) / (COMMON_ZIPF - RARE_ZIPF)))


@dataclass(frozen=True)
class Concept:
    text: str  # how the question put it, for explanations
    forms: tuple[Form, ...]
    partial: bool = False  # a Chinese word outside the lexicon: credit for the share of its bigrams found
    weight: float = 1.0  # of its IDF: 1 for a lexicon concept, less for a word the lexicon does not know

    def found(self, tokens: set[str]) -> float:
        if self.partial:
            form = self.forms[0]
            return sum(t in tokens for t in form) / len(form)
        return 1.0 if any(all(t in tokens for t in form) for form in self.forms) else 0.0


@dataclass(frozen=True)
class Query:
    text: str
    concepts: tuple[Concept, ...]
    sparse_tokens: tuple[str, ...]  # BM25 query: the question's tokens and every form of its lexicon concepts


def analyse(question: str, lexicon: Lexicon) -> Query:
    groups, rest = lexicon.find(question)
    concepts = []
    for line_ids, _ in groups:
        forms = tuple(dict.fromkeys(f for g in line_ids for f in lexicon.groups[g]))
        concepts.append(Concept(" ".join(forms[0]), forms))
    for run in CJK_RUN.findall(rest):
        for word, tag in jieba.posseg.lcut(run):
            if len(word) < 2 or word in STOPWORDS or tag[:1] not in CONTENT_TAGS or _a_name(word, tag):
                continue  # a leftover character or a function word is phrasing, not topic
            concepts.append(Concept(word, (tuple(bigrams(word)),), partial=True, weight=rarity(word)))
    concepts += _compounds(question, lexicon)
    english = CJK_RUN.sub(" ", rest)
    for word in dict.fromkeys(m.group() for m in ENGLISH_WORD.finditer(english)):
        token = english_token(word)
        if token and not word.isdigit():  # numbers are the answer's business, not the topic
            concepts.append(Concept(word, ((token,),), weight=rarity(word)))
    sparse = list(tokenize(question))
    sparse += [t for c in concepts for form in c.forms for t in form]
    return Query(question, tuple(dict.fromkeys(concepts)), tuple(dict.fromkeys(sparse)))


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

