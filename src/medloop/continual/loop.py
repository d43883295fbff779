"""The two jobs of the loop: ingest the guideline inbox; retrain, gate, promote, hot-load."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from enum import StrEnum
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

from medloop.config import Settings
from medloop.continual import dataset as incremental
from medloop.continual import gate
from medloop.continual.mcq import load_mcq
from medloop.continual.registry import AdapterRecord, AdapterRegistry, Status
from medloop.knowledge.ingest import FileOutcome
from medloop.knowledge.parsing import SUPPORTED_SUFFIXES
from medloop.retrieval.embedder import encoder
from medloop.retrieval.ingest import IngestBusy, ingest_and_index
from medloop.training.data import BadSample, detect_layout


class Outcome(StrEnum):
    """What one run of a job did (`medloop scheduler status`, the job's JSON)."""

    OK = "ok"
    FAILED_SOME = "failed-some"  # ingest: some files failed, the rest went in
    NOTHING_NEW = "nothing-new"
    SKIPPED = "skipped"  # another retraining holds the lock
    PROMOTED = "promoted"
    REJECTED = "rejected"
    TOO_LITTLE_DATA = "too-little-data"  # skipped: the gate would judge on training data


def _move(path: Path, folder: Path) -> Path | None:
    """Move a file (or a link, as itself) into `folder`, keeping both when the name is taken; None when it is
    gone already (deleted by someone else meanwhile)."""
    if not path.exists() and not path.is_symlink():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # keep both: the same name can arrive twice
        target = folder / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
    shutil.move(str(path), target)
    return target


def _fail(path: Path, settings: Settings, reason: str) -> None:
    moved = _move(path, settings.failed_dir)
    if moved is not None:
        moved.with_name(moved.name + ".error.txt").write_text(reason + "\n")


def inbox_files(folder: Path, settle_s: float) -> tuple[list[Path], list[Path], list[Path]]:
    """(files ready, files still being written, symbolic links) in `folder`. A file is ready once it has not
    changed for `settle_s` seconds: a guideline copied in slowly is not read half-written (or move finished files
    in with an atomic rename). Ready files come smallest first, so a large file never holds up the rest."""
    if not folder.exists():
        return [], [], []
    now = time.time()
    ready, settling, links = [], [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_symlink():
            links.append(p)
        elif p.is_file():
            (ready if now - p.stat().st_mtime >= settle_s else settling).append(p)
    return sorted(ready, key=lambda p: p.stat().st_size), settling, links


SYMLINK_REFUSED = ("a symbolic link: refused, it could publish any file the service can read (copy the file into "
                   "the inbox instead)")


GUIDELINE_SUFFIXES = SUPPORTED_SUFFIXES - {".jsonl"}  # a JSONL file is told apart by its first object


def _kind(path: Path) -> str | None:
    """'guidelines' or 'sft' for a file dropped straight into inbox/, or None when it cannot be told."""
    if path.suffix.lower() in GUIDELINE_SUFFIXES:
        return "guidelines"
    if path.suffix.lower() not in {".jsonl", ".json"}:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        obj = json.loads(first) if path.suffix.lower() == ".jsonl" else json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    obj = obj[0] if isinstance(obj, list) and obj else obj
    if not isinstance(obj, dict):
        return None
    try:
        detect_layout(obj)  # one of the SFT layouts `medloop train` reads
        return "sft"
    except BadSample:
        return "guidelines" if {"text", "content"} & obj.keys() else None


def route_inbox(settings: Settings) -> dict[str, int]:
    """Files dropped into inbox/ itself go where they belong (inbox/guidelines/ or inbox/sft/) by what they
    are; one that cannot be told apart goes to failed/ with a note that says where such files go."""
    routed = {"guidelines": 0, "sft": 0, "failed": 0}
    ready, _, links = inbox_files(settings.inbox_dir, settings.inbox_settle_s)
    for link in links:
        _fail(link, settings, SYMLINK_REFUSED)
        routed["failed"] += 1
    for path in ready:
        kind = _kind(path)
        if kind is None:
            _fail(path, settings, f"cannot tell what {path.name} is: put guideline files (md, txt, html, pdf, jsonl "
                  f"with 'text') in {settings.inbox_dir / 'guidelines'} and SFT data (jsonl with 'conversations', "
                  f"'messages' or 'instruction'/'output') in {settings.inbox_dir / 'sft'}")
            routed["failed"] += 1
        elif _move(path, settings.inbox_dir / kind) is not None:
            routed[kind] += 1
    return routed


@functools.lru_cache(maxsize=1)
def _kept_encoder(index_dir: Path, name: str):
    """The scheduler's encoder, loaded on the first poll with files and kept: a later poll costs its files, not a
    model load."""
    return encoder(index_dir, name)


def ingest_inbox(settings: Settings) -> dict:
    """Ingest everything in inbox/guidelines/ (and guidelines dropped into inbox/ itself); move each file to
    processed/ or to failed/ beside a .error.txt."""
    routed = route_inbox(settings)
    serving = retry_hot_load(settings)
    inbox = settings.inbox_dir / "guidelines"
    inbox.mkdir(parents=True, exist_ok=True)
    files, settling, links = inbox_files(inbox, settings.inbox_settle_s)
    for link in links:
        _fail(link, settings, SYMLINK_REFUSED)
    if not files:
        return {"outcome": Outcome.FAILED_SOME if links else Outcome.NOTHING_NEW, "files": 0, "refused": len(links),
                "settling": len(settling), "routed": routed, "serving": serving}
    try:
        report, synced = ingest_and_index(settings, files, wait_s=0,
                                          embedder=_kept_encoder(settings.index_dir, settings.embedder))
    except IngestBusy as e:  # a `medloop ingest` on this home: its files wait for the next poll
        return {"outcome": Outcome.SKIPPED, "reason": str(e)}
    for result in report.files:
        if result.outcome == FileOutcome.FAILED:
            _fail(result.path, settings, result.error)
        else:
            _move(result.path, settings.processed_dir / "guidelines")
    counts = dict(report.counts)
    return {"outcome": Outcome.FAILED_SOME if report.failed or links else Outcome.OK, "files": len(files), **counts,
            "refused": len(links), "settling": len(settling), "notes": [n for f in report.files for n in f.notes],
            "index_version": synced.version}


@contextlib.contextmanager
def training_lock(settings: Settings):
    """One retraining at a time. A killed holder's lock is released by the OS, so it never goes stale."""
    settings.adapters_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(settings.adapters_dir / ".train.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def hot_load(settings: Settings, record: AdapterRecord) -> str:
    """Tell the running server to serve this version under the stable name; it keeps serving meanwhile.
    The answer is kept in the registry (serving.json): a version the server did not load stays
    "promoted, not live" and `retry_hot_load` tries again on every ingest poll."""
    headers = {"Authorization": f"Bearer {settings.admin_key.get_secret_value()}"} if settings.admin_key else {}
    body = {"action": "load", "name": settings.served_adapter_name, "path": record.path, "version": record.version}
    try:
        r = httpx.post(settings.server_url.rstrip("/") + "/admin/adapters", json=body, headers=headers, timeout=300)
        ok, detail = r.status_code == 200, "hot-loaded" if r.status_code == 200 else \
            f"server refused the adapter ({r.status_code}): {r.text[:200]}"
    except httpx.HTTPError as e:
        ok, detail = False, f"server not reachable ({type(e).__name__}): retried on every ingest poll"
    AdapterRegistry(settings.adapters_dir).mark_serving(record.version, ok, detail)
    return detail


def retry_hot_load(settings: Settings) -> str | None:
    """Hot-load the live version if the server has not confirmed it yet; None when nothing is pending."""
    if not settings.adapters_dir.exists():
        return None
    pending = AdapterRegistry(settings.adapters_dir).pending_hot_load()
    return hot_load(settings, pending) if pending is not None else None


def retrain(settings: Settings, *, retriever=None, log=print) -> dict:
    """One month: incremental data -> QLoRA from the live adapter -> gate -> promote and hot-load, or reject.

    Nothing is lost: the month's inbox files move to processed/ once a version is promoted; a rejected
    month's go to failed/sft/ beside a note with the gate's reason (move them back to inbox/sft/ after a
    fix); a crash or kill leaves them in the inbox for the next run."""
    registry = AdapterRegistry(settings.adapters_dir)
    with training_lock(settings) as acquired:
        if not acquired:
            return {"outcome": Outcome.SKIPPED, "reason": "another retraining holds the lock"}
        stale = registry.clean_stale()
        if stale:
            log(f"cleaned up interrupted runs: {', '.join(stale)}")
        live = registry.live()
        if retriever is None:
            from medloop.retrieval import Retriever

            retriever = Retriever(settings)
        mcq_items = load_mcq(settings.gate_mcq) if settings.gate_mcq else []
        data = incremental.build(settings, since=live.created if live else "", retriever=retriever,
                                 replay_from=Path(live.path) / "data" / "train.jsonl" if live else None,
                                 gate_questions=[item.question for item in mcq_items])
        if data is None:
            return {"outcome": Outcome.NOTHING_NEW}
        new = data.manifest["counts"]["train_new"] + data.manifest["counts"]["heldout"]
        if new < settings.min_new_samples or not data.heldout:
            reason = (f"too little new data: {new} usable new samples (min_new_samples {settings.min_new_samples}, "
                      f"{len(data.heldout)} held out); the inbox files stay for next month")
            log(reason)
            return {"outcome": Outcome.TOO_LITTLE_DATA, "reason": reason, "counts": data.manifest["counts"]}
        record = registry.new_version(live.version if live else None, data.manifest)
        log(f"{record.version}: training on {data.manifest['counts']} from {live.version if live else 'scratch'}")
        if data.manifest["gate_repeats"]:
            log(f"{len(data.manifest['gate_repeats'])} samples ask what the gate checks: not trained on")
        try:
            result = _train_gate_promote(settings, registry, record, live, data, retriever, mcq_items, log)
        except Exception as e:
            record.status, record.pid = Status.FAILED, None
            record.decision = {"reason": f"{type(e).__name__}: {e}"}
            registry.save(record)
            raise  # the inbox files stay where they are: the next run trains on them
        for f in data.inbox_files:
            if result["outcome"] == Outcome.PROMOTED:
                _move(f, settings.processed_dir / "sft")
            elif (moved := _move(f, settings.failed_dir / "sft")) is not None:
                moved.with_name(moved.name + ".reason.txt").write_text(
                    f"{record.version} rejected by the gate: {json.dumps(result['decision'], default=str)}\n"
                    f"move this file back to {settings.inbox_dir / 'sft'} to train on it again\n")
        return result


def _train_gate_promote(settings, registry, record, live, data, retriever, mcq_items, log) -> dict:
    from medloop import models
    from medloop.training import make_config, train

    # a GGUF base (the embedded default is one) trains, and is judged, as its dequantised folder kept in the home
    base_model = models.trainable(settings.train_base_model or settings.base_model, settings.models_dir)
    files = data.write(Path(record.path) / "data")
    overrides = {"val_size": 0, "swanlab_mode": settings.swanlab_mode, **settings.train_overrides}
    config = make_config(settings.train_preset, base_model=base_model, data=[files["train"]],
                         output_dir=Path(record.path), init_adapter=Path(live.path) if live else None, **overrides)
    result = train(config, log=log)
    shutil.rmtree(Path(record.path) / "checkpoints", ignore_errors=True)
    signals, measured = gate.measure(base_model, Path(record.path), Path(live.path) if live else None,
                                     heldout=data.heldout, regression=data.regression, quantize=config.quantize,
                                     mcq_items=mcq_items, retriever=retriever, k=settings.evidence_k,
                                     fact_tokens=settings.gate_fact_tokens)
    signals.update(gate.data_signals(data.new, retriever, settings.evidence_k))
    decision = {**gate.decide(signals, gate.Rules.from_settings(settings)), **measured}
    held = decision["signals"]["new_data_loss"]
    record.metrics = {"train_loss": result.train_loss, "steps": result.steps,
                      "heldout_loss_candidate": held["candidate"], "heldout_loss_live": held["live"]}
    record.decision, record.pid = decision, None
    if not decision["promote"]:
        record.status = Status.REJECTED
        registry.save(record)
        log(f"{record.version}: rejected by {decision['decided_by']}: "
            f"{decision['signals'][decision['decided_by']]['why']}")
        return {"outcome": Outcome.REJECTED, "version": record.version, "decision": decision}
    record.status = Status.CANDIDATE
    registry.save(record)
    registry.promote(record.version)
    with open(registry.regression_file, "a") as f:  # this run's held-out data guards every later run
        f.write(files["heldout"].read_text())
    served = hot_load(settings, record)
    log(f"{record.version}: promoted; {served}")
    return {"outcome": Outcome.PROMOTED, "version": record.version, "decision": decision, "serving": served}
