"""The monthly incremental dataset: new SFT samples, evidence-augmented copies, and replay of earlier data."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from medloop.config import Settings
from medloop.continual.registry import AdapterRegistry
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

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name in ("train", "heldout", "regression"):
            paths[name] = folder / f"{name}.jsonl"
            with open(paths[name], "w") as f:
                for messages in getattr(self, name):
                    f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        return paths


def build(settings: Settings, *, since: str, retriever=None, seed: int = 0) -> IncrementalDataset | None:
    """Everything new since `since` (the live adapter's creation time). None when there is nothing new."""
    inbox = settings.inbox_dir / "sft"
    inbox_files = sorted(p for p in inbox.glob("*") if p.suffix in {".jsonl", ".json"}) if inbox.exists() else []
    new, report = load_samples(inbox_files) if inbox_files else ([], None)
    if not new:
        return None
    rng = random.Random(seed)
    train_new, heldout = split(new, settings.holdout_fraction if len(new) >= 2 else 0, seed)

    # Samples that touch guidelines ingested since the live adapter: learn to use the new evidence.
    with KnowledgeStore(settings.knowledge_db) as store:
        fresh = {v["doc_id"] for v in store.versions_ingested_since(since)}
    augmented = []
    if retriever is not None and fresh:
        for messages in train_new:
            # Only the prompt is grounded: the answer (last turn) stays the sample's own.
            grounded, hits, _ = grounding.ground(retriever, messages[:-1], settings.evidence_k)
            if any(h.chunk.doc_id in fresh for h in hits):
                augmented.append([*grounded, messages[-1]])

    # Replay earlier data against forgetting, and hold a fixed regression set of it.
    earlier_files = sorted((settings.processed_dir / "sft").glob("*.json*"))
    earlier = load_samples(earlier_files)[0] if earlier_files else []
    n_replay = min(len(earlier), round(settings.replay_fraction * (len(train_new) + len(augmented))))
    replay = rng.sample(earlier, n_replay)
    regression_file = AdapterRegistry(settings.adapters_dir).regression_file
    regression = load_samples([regression_file])[0] if regression_file.exists() else []

    train = train_new + augmented + replay
    rng.shuffle(train)
    manifest = {
        "since": since,
        "inbox_files": report.files,
        "dropped_lines": [{"file": f, "line": n, "reason": r} for f, n, r in report.dropped],
        "new_guidelines": sorted(fresh),
        "counts": {"new": len(new), "train_new": len(train_new), "evidence_augmented": len(augmented),
                   "replay": len(replay), "heldout": len(heldout), "regression": len(regression),
                   "train_total": len(train)},
    }
    return IncrementalDataset(train, heldout, regression, inbox_files, manifest)
