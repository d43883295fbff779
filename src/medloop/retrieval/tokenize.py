"""Sparse-retrieval tokens, shared by BM25, the relevance score and the stale-answer check.

English: lower-cased Snowball stems ("headaches" and "headache" meet). Chinese: jieba words *and* every
character (unigram) and character bigram of a CJK run, so a word matches however jieba happened to segment
the text it is in ("血压高" / "高血压", "降压药" / "降压药物").
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

import jieba
import Stemmer

from medloop.knowledge.language import CJK, CJK_RANGES

jieba.setLogLevel(logging.WARNING)

VERSION = 4  # bump when tokens change: an index built with other tokens is rebuilt
WORD = re.compile(f"[\\w{CJK_RANGES}]+")
CJK_RUN = re.compile(f"[{CJK_RANGES}]+")
# Question words, particles and phrasing that every guideline "matches"; without them BM25 and the relevance
# score reward the way a question is asked rather than what it asks.
STOPWORDS = set(
    "的 了 是 在 和 与 及 或 等 中 对 为 有 哪些 什么 怎么 怎样 如何 应该 应当 需要 可以 吗 呢 吧 么 多少 "
    "一个 一般 进行 患者 治疗 我 你 他 她 们 这 那 要 会 能 时 后 前 上 下 应 该 请问 请 问 想 知道 "
    "多久 多长 多长时间 什么时候 何时 几个 是不是 可不可以 能不能 行不行 要不要 怎么办 哪种 哪个 哪类 什么样 为什么 "
    "能用 可用 用于 能否 相关 情况 情况下 好处 作用 优点 意义 地位 怎么办 合适 适合 正常 对吗 对不对 医生 大夫 刚 查出 "
    "查了 一次 算不算 算 没有 爸 妈 爸爸 妈妈 父亲 母亲 老公 老婆 家里 怀疑 疑似 疗程 开始 多快 人 到 做 "
    "能用 可用 病人 得了 患了 一下 怎么样 好不好 管用 有用 有效 指南 推荐 建议 最新 目前 现在 现行 规定 说 "
    "以下 以内 以上 左右 多 少 好 还 就 都 也 很 最 吃 用 得 着 过 个 些 没 不 么样 是否 还是 有没有 "
    "a an the of to in on for and or is are was be with what which how should do does can i my "
    "me you your it its by at as from that this these those when who whom why whether there their "
    "good bad ok okay best get take use need want know tell please much many any some about into than "
    "patient patients people person treatment treat treated therapy manage management used using only "
    "duration placed put given started start begin years suspected suspect possible "
    "long often right last after guideline guidelines recommend recommends recommended recommendation "
    "recommendations say says said according latest current new am been being has have had would could will "
    "shall may might must so if then also just still".split()
)
_stem = Stemmer.Stemmer("english").stemWord


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return _stem(word)


def bigrams(run: str) -> list[str]:
    return [run[i : i + 2] for i in range(len(run) - 1)]


def tokenize(text: str) -> list[str]:
    tokens = []
    for piece in WORD.findall(text.lower()):
        if CJK.search(piece):
            for word in jieba.cut_for_search(piece):
                tokens += _word(word) if CJK.search(word) is None else ([word] if _keep(word) else [])
            for run in CJK_RUN.findall(piece):
                tokens += [c for c in run if c not in STOPWORDS] + [b for b in bigrams(run) if b not in STOPWORDS]
        else:
            tokens += _word(piece)
    return tokens


def _keep(cjk_word: str) -> bool:
    return len(cjk_word) > 1 and cjk_word not in STOPWORDS


def english_token(word: str) -> str | None:
    """The stem of a non-CJK word, or None for a stop word (as written or once stemmed: "used", "treating")."""
    word = word.strip().lower()
    if len(word) < 2 or word in STOPWORDS:  # "I'm" leaves an "m"
        return None
    if len(word) > 2 and word.endswith("s") and not re.search(r"[aeiouy]", word[:-1]):
        word = word[:-1]  # an abbreviation's plural ("CCBs", "CGMs"), which the stemmer keeps: it has no vowel
    stemmed = stem(word)
    return None if stemmed in STOPWORDS else stemmed


def _word(word: str) -> list[str]:
    token = english_token(word)
    return [token] if token else []
