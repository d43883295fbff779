"""How good is the evidence? Ranking and citation figures on labelled questions, and the calibration of the
citation threshold.

A labelled row: {"question", "guideline_ids": [accepted guidelines; empty for an off-topic question],
"versions": {guideline: its newest version}, "kind": direct | paraphrase | colloquial | abbreviation |
cross-lingual | off, "passage": the answering words (optional: a hit counts only when its chunk holds them)}.
The sample sets live in `medloop/data/retrieval_dev.jsonl` (tune on it), `retrieval_heldout.jsonl` and
`retrieval_fresh.jsonl` (check on them, never tune); a hospital's own sets in bench/sets/.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from importlib import resources
from pathlib import Path

from medloop.jsonl import JSONLError, json_objects

TARGETS = {"cited_recall": (">=", 0.95), "false_cite_rate": ("<=", 0.02), "newest_version_share": (">=", 1.0)}


def sample_set(name: str) -> Path:
    return Path(str(resources.files("medloop").joinpath(f"data/retrieval_{name}.jsonl")))


def load_labelled(path: Path) -> list[dict]:
    rows = []
    try:
        objects = list(json_objects(path.read_text(encoding="utf-8")))
    except JSONLError as e:
        raise ValueError(f"{path}:{e}") from e
    for line, row in objects:
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise ValueError(f"{path}:{line}: `question` must be a non-empty string")
        ids = row.get("guideline_ids", [row["guideline_id"]] if row.get("guideline_id") else [])
        if not isinstance(ids, list):
            raise ValueError(f"{path}:{line}: `guideline_ids` must be a list (empty for an off-topic question)")
        versions = row.get("versions") or ({ids[0]: str(row["version"])} if row.get("version") and ids else {})
        passage = row.get("passage")
        if passage is not None and (not isinstance(passage, str) or not passage.strip()):
            raise ValueError(f"{path}:{line}: `passage` must be the answering words (a non-empty string)")
        rows.append({"question": row["question"], "guideline_ids": ids, "versions": versions,
                     "kind": row.get("kind", "off" if not ids else "direct"), "passage": passage})
    return rows


def retrieval_quality(retriever, rows: list[dict], k: int = 3, *, min_evidence: float | None = None) -> dict:
    """hit@1, hit@3, MRR over the top k; cited recall (an accepted guideline among the cited hits of the top
    k, which is what the evidence block shows), false-cite rate (an off-topic question with any citation),
    newest-version share. The threshold defaults to the retriever's settings; pass another to try it."""
    threshold = retriever.settings.retrieval.min_evidence if min_evidence is None else min_evidence
    per_question, by_kind = [], defaultdict(lambda: [0, 0])
    hit1 = hit3 = mrr = recall = false_cites = newest = newest_n = 0
    on_topic = [r for r in rows if r["guideline_ids"]]
    for row in rows:
        hits = retriever.search(row["question"], max(k, 3))
        # without a threshold given, the retriever's own verdict (a reranker's included)
        cited = [h for h in hits[:k] if (h.relevant if min_evidence is None else h.evidence >= threshold)]
        accepted = set(row["guideline_ids"])
        answers = _answers(row)
        docs = [h.chunk.doc_id for h in hits[:k]]
        record = {"question": row["question"], "kind": row["kind"], "top": docs[:3],
                  "cited": [h.chunk.doc_id for h in cited],
                  "relevance": [round(h.relevance, 3) for h in hits[:3]],
                  "cosine": [round(h.dense_score, 3) for h in hits[:3]],
                  "evidence": [round(h.evidence, 3) for h in hits[:3]]}
        if accepted:
            rank = next((i for i, h in enumerate(hits[:k], 1) if answers(h)), None)
            hit1 += rank == 1
            hit3 += rank is not None and rank <= 3
            mrr += 1 / rank if rank else 0.0
            ok = any(answers(h) for h in cited)
            recall += ok
            by_kind[row["kind"]][0] += ok
            by_kind[row["kind"]][1] += 1
            matching = [h for h in hits[:k] if h.chunk.doc_id in accepted]
            if matching:
                newest_n += 1
                newest += sum(h.chunk.version == row["versions"].get(h.chunk.doc_id, h.chunk.version)
                              for h in matching) / len(matching)
            record.update(rank=rank, cited_right=ok)
        else:
            false_cites += bool(cited)
            record.update(false_cite=bool(cited))
        per_question.append(record)
    n_on, n_off = max(len(on_topic), 1), max(len(rows) - len(on_topic), 1)
    figures = {
        "questions": len(rows), "on_topic": len(on_topic), "off_topic": len(rows) - len(on_topic), "k": k,
        "hit_at_1": hit1 / n_on, "hit_at_3": hit3 / n_on, "mrr": mrr / n_on, "cited_recall": recall / n_on,
        "false_cite_rate": false_cites / n_off, "newest_version_share": newest / newest_n if newest_n else 1.0,
        "cited_recall_by_kind": {kind: ok / total for kind, (ok, total) in sorted(by_kind.items())},
        "min_evidence": threshold,
    }
    figures["targets_met"] = {name: _meets(figures[name], op, goal) for name, (op, goal) in TARGETS.items()}
    figures["per_question"] = per_question
    return figures


def _answers(row: dict):
    """Does a hit answer the labelled question: an accepted guideline, holding the passage where one is given."""
    accepted, passage = set(row["guideline_ids"]), _plain(row.get("passage") or "")
    return lambda hit: hit.chunk.doc_id in accepted and passage in _plain(hit.chunk.text)


def _plain(text: str) -> str:
    """Whitespace does not decide whether a chunk holds a passage (a chunk boundary may fold a line)."""
    return " ".join(text.split())


def _meets(value: float, op: str, goal: float) -> bool:
    return value >= goal if op == ">=" else value <= goal


class Routed:
    """Several labelled sets, each on its own corpus, calibrated as one: a question goes to its set's retriever."""

    def __init__(self, sets: list[tuple[object, list[dict]]]):
        self.routes = {row["question"]: retriever for retriever, rows in sets for row in rows}
        self.rows = [row for _, rows in sets for row in rows]

    def search(self, question: str, k: int):
        return self.routes[question].search(question, k)


@dataclasses.dataclass
class Calibration:
    min_evidence: float
    cited_recall: float
    false_cite_rate: float
    gap: tuple[float, float]  # every threshold in [lo, hi) gives the same figures: the midpoint is chosen


def calibrate(retriever, rows: list[dict], k: int = 3, max_false_cite_rate: float = 0.02) -> Calibration:
    """The evidence threshold with the best cited recall whose false-cite rate stays within the bound: the
    midpoint of the widest such interval between observed scores, so it is not fitted to one question."""
    positives, negatives = [], []
    for row in rows:
        hits = retriever.search(row["question"], k)
        if row["guideline_ids"]:
            answers = _answers(row)
            positives.append(max((h.evidence for h in hits if answers(h)), default=0.0))
        else:
            negatives.append(max((h.evidence for h in hits), default=0.0))
    edges = sorted({0.0, 2.0 + 1e-9, *positives, *negatives})
    best: tuple | None = None
    for lo, hi in zip(edges, edges[1:], strict=False):
        t = (lo + hi) / 2
        recall = sum(p >= t for p in positives) / max(len(positives), 1)
        false = sum(q >= t for q in negatives) / max(len(negatives), 1)
        if false <= max_false_cite_rate:
            key = (recall, hi - lo)
            if best is None or key > best[0]:
                best = (key, t, recall, false, (lo, hi))
    assert best is not None  # a threshold above every score cites nothing: false-cite rate 0
    _, t, recall, false, gap = best
    return Calibration(round(t, 3), recall, false, (round(gap[0], 3), round(min(gap[1], 2.0), 3)))


STALE_TARGETS = {"detection": (">=", 0.9), "false_flag_rate": ("<=", 0.05)}


# The packaged stale-check sets: dev (tuned on), held-out, then fresh sets each written after the changes the one
# before it moved (the last is reported, never tuned on).
STALE_SETS = ("dev", "heldout", "fresh", "fresh2", "fresh3", "fresh4", "fresh5", "fresh6", "fresh7")


def stale_set(name: str) -> Path:
    return Path(str(resources.files("medloop").joinpath(f"data/stale_{name}.jsonl")))


def stale_check_quality(store, path: Path, lex=None) -> dict:
    """The stale-answer check on labelled answers ({"answer", "cited": [guideline ids], "stale": [the claims a
    superseded version alone makes, as written or any name of them; empty for a current answer], "language"}):
    detection (stale answers flagged, for every labelled claim) and the false-flag rate (current answers
    flagged at all), overall and by language."""
    from medloop.retrieval.claims import digits
    from medloop.retrieval.lexicon import lexicon
    from medloop.retrieval.staleness import stale_claims

    lex = lex or lexicon()

    def same(expected: str, flagged: str) -> bool:
        """The labelled claim and the flagged one are one claim: the same value (in digits or in words: the check
        reads "一百四十/九十" as 140/90), or names of one concept."""
        expected, flagged = digits(expected).lower(), digits(flagged).lower()
        if expected in flagged or flagged in expected:
            return True
        concepts = [{g for groups, _ in lex.find(t)[0] for g in groups} for t in (expected, flagged)]
        return bool(concepts[0] & concepts[1])

    try:
        objects = list(json_objects(path.read_text(encoding="utf-8")))
    except JSONLError as e:
        raise ValueError(f"{path}:{e}") from e
    per_answer, groups = [], defaultdict(lambda: {"stale": 0, "detected": 0, "current": 0, "flagged": 0})
    for line, row in objects:
        if not isinstance(row.get("answer"), str) or not isinstance(row.get("stale"), list):
            raise ValueError(f"{path}:{line}: needs `answer` (text) and `stale` (a list, empty when current)")
        flags = stale_claims(row["answer"], row.get("cited", []), store, lex)
        said, expected = [f.claim for f in flags], row["stale"]
        ok = all(any(same(e, s) for s in said) for e in expected) if expected else not flags
        for group in ("all", row.get("language", "?")):
            g = groups[group]
            if expected:
                g["stale"] += 1
                g["detected"] += ok
            else:
                g["current"] += 1
                g["flagged"] += bool(flags)
        per_answer.append({"line": line, "answer": row["answer"], "expected": row["stale"], "flagged": said,
                           "correct": ok})

    def figures(g):
        return {"detection": round(g["detected"] / g["stale"], 3) if g["stale"] else None,
                "false_flag_rate": round(g["flagged"] / g["current"], 3) if g["current"] else None,
                "stale_answers": g["stale"], "current_answers": g["current"]}

    result = {**figures(groups["all"]), "by_language": {k: figures(v) for k, v in groups.items() if k != "all"},
              "per_answer": per_answer}
    result["targets_met"] = {name: (result[name] >= goal if op == ">=" else result[name] <= goal)
                             for name, (op, goal) in STALE_TARGETS.items() if result[name] is not None}
    return result
