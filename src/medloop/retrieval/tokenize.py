"""Sparse-retrieval tokens: jieba words for Chinese, lower-cased words for English."""

from __future__ import annotations

import logging
import re

import jieba

from medloop.knowledge.language import CJK, CJK_RANGES

jieba.setLogLevel(logging.WARNING)

WORD = re.compile(f"[\\w{CJK_RANGES}]+")
# Question words and particles that every guideline "matches"; without them BM25 rewards the phrasing.
STOPWORDS = set(
    "的 了 是 在 和 与 及 或 等 中 对 为 有 哪些 什么 怎么 怎样 如何 应该 应当 需要 可以 吗 呢 吧 么 多少 "
    "一个 一般 进行 患者 治疗 我 你 他 她 们 这 那 要 会 能 时 后 前 上 下 "
    "a an the of to in on for and or is are was be with what which how should do does can i my "
    "me you your it its by at as from that this these those when who whom why".split()
)


def tokenize(text: str) -> list[str]:
    tokens = []
    for piece in WORD.findall(text.lower()):
        for tok in jieba.cut_for_search(piece) if CJK.search(piece) else [piece]:
            if tok not in STOPWORDS and tok.strip():
                tokens.append(tok)
    return tokens

