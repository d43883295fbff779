"""The monthly incremental dataset: new SFT samples, evidence-augmented copies, and replay of earlier data."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from medloop.config import Settings
from medloop.continual.registry import AdapterRegistry
from medloop.knowledge.similarity import fingerprint, near_duplicates, shingles
from medloop.knowledge.store import KnowledgeStore
from medloop.retrieval import grounding
from medloop.training.data import load_samples, split


@dataclass
class IncrementalDataset:
    train: list[list[dict]]
    heldout: list[list[dict]]
    regression: list[list[dict]]
    inbox_files: list[Path]
    manifest: dict = field(default_factory=dict)
    new: list[list[dict]] = field(default_factory=list)  # the month's own samples: training and held-out

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("train", "heldout", "regression"):
            paths[name] = folder / f"{name}.jsonl"
            with open(paths[name], "w") as f:
                for messages in getattr(self, name):
                    f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        return paths


THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def normalised(messages: list[dict]) -> str:
    """The conversation's text without reasoning blocks, case, spaces and punctuation: the same Q&A in
    another layout, with or without <think>, normalises to the same string."""
    return fingerprint(" ".join(THINK.sub("", m["content"]) for m in messages))


class DuplicateGuard:
    """Recognises a conversation that is one of the guarded ones (the same normalised text), or asks nearly
    the same thing (its prompt, every turn before the answer, is a near duplicate of a guarded prompt)."""

    def __init__(self, guarded: list[list[dict]]):
        self.exact = set()
        self.shingled: list[tuple[int, frozenset[str]]] = []
        for messages in guarded:
            self.add(messages)

    def add(self, messages: list[dict]) -> None:
        self.exact.add(normalised(messages))
        prompt = normalised(messages[:-1])
        self.shingled.append((len(prompt), shingles(prompt)))

    def __contains__(self, messages: list[dict]) -> bool:
        if normalised(messages) in self.exact:
            return True
        text = normalised(messages[:-1])
        grams = shingles(text)
        for length, other in self.shingled:
            if 0.7 * length <= len(text) <= length / 0.7 and near_duplicates(grams, other):
                return True
        return False


def asks_a_gate_item(messages: list[dict], gate: DuplicateGuard) -> bool:
    """Does this conversation ask (exactly or nearly) a question the gate checks? Its last question is compared."""
    return [{"role": "user", "content": grounding.latest_question(messages[:-1])}, messages[-1]] in gate


def gate_guard(questions: list[str]) -> DuplicateGuard:
    return DuplicateGuard([[{"role": "user", "content": q}, {"role": "assistant", "content": ""}] for q in questions])


def unique(conversations: list[list[dict]]) -> list[list[dict]]:
    seen, out = DuplicateGuard([]), []
    for messages in conversations:
        if messages not in seen:
            seen.add(messages)
            out.append(messages)
    return out


def build(settings: Settings, *, since: str, retriever=None, seed: int = 0, replay_from: Path | None = None,
          gate_questions: list[str] = ()) -> IncrementalDataset | None:
    """Everything new since `since` (the live adapter's creation time). None when there is nothing new.

    What judges a version never trains it: the month's new samples are de-duplicated (exactly and nearly,
    across layouts), samples that ask one of the gate's MCQ/fact questions (`gate_questions`) or repeat a
    regression row are dropped before the held-out split, training rows that repeat a held-out row are dropped
    after it, and replay never draws a regression or held-out row."""
    inbox = settings.inbox_dir / "sft"
    found = inbox.glob("*") if inbox.exists() else []
    inbox_files = sorted(p for p in found if p.suffix.lower() in {".jsonl", ".json"})  # .JSONL too
    loaded, report = load_samples(inbox_files) if inbox_files else ([], None)
    if not loaded:
        return None
    rng = random.Random(seed)
    regression_file = AdapterRegistry(settings.adapters_dir).regression_file
    regression = load_samples([regression_file])[0] if regression_file.exists() else []
    guard = DuplicateGuard(regression)
    gate = gate_guard(list(gate_questions))
    fresh_rows = unique(loaded)
    gate_repeats = [m for m in fresh_rows if asks_a_gate_item(m, gate)]
    new = [m for m in fresh_rows if m not in guard and not asks_a_gate_item(m, gate)]
    train_new, heldout = split(new, settings.loop.holdout_fraction if len(new) >= 2 else 0, seed)
    for messages in heldout:
        guard.add(messages)
    train_new = [m for m in train_new if m not in guard]

    # Samples that touch guidelines ingested since the live adapter: learn to use the new evidence.
    with KnowledgeStore(settings.knowledge_db) as store:
        fresh = {v["doc_id"] for v in store.versions_ingested_since(since)}
    augmented = []
    if retriever is not None and fresh:
        for messages in train_new:
            # Only the prompt is grounded: the answer (last turn) stays the sample's own.
            grounded, hits, _ = grounding.ground(retriever, messages[:-1], settings.serving.evidence_k)
            if any(h.chunk.doc_id in fresh for h in hits):
                augmented.append([*grounded, messages[-1]])

    # Replay earlier data against forgetting; never what the regression set or this month's held-out holds.
    # What the live adapter was trained on (`replay_from`, its own replay and evidence-grounded rows included),
    # not the raw inbox files: replaying questions without the evidence they were learned with lets the next
    # month forget how to answer from evidence (on the sabotage suite's model a good month then lost 19 of 24
    # facts that the gate checks with evidence).
    earlier_files = [replay_from] if replay_from is not None and replay_from.exists() else \
        sorted((settings.processed_dir / "sft").glob("*.json*"))
    earlier = [m for m in (load_samples(earlier_files)[0] if earlier_files else []) if m not in guard]
    n_replay = min(len(earlier), round(settings.loop.replay_fraction * (len(train_new) + len(augmented))))
    replay = rng.sample(earlier, n_replay)

    train = train_new + augmented + replay
    rng.shuffle(train)
    manifest = {
        "since": since,
        "inbox_files": report.files,
        "dropped_lines": [{"file": f, "line": n, "reason": r} for f, n, r in report.dropped],
        "new_guidelines": sorted(fresh),
        "gate_repeats": [grounding.latest_question(m[:-1])[:120] for m in gate_repeats],
        "counts": {"loaded": len(loaded), "new": len(new), "gate_repeats": len(gate_repeats),
                   "train_new": len(train_new), "evidence_augmented": len(augmented), "replay": len(replay),
                   "heldout": len(heldout), "regression": len(regression), "train_total": len(train)},
    }
    return IncrementalDataset(train, heldout, regression, inbox_files, manifest, new=train_new + heldout)
