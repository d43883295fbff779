"""The two jobs of the loop: ingest the guideline inbox; retrain, gate, promote, hot-load."""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from enum import StrEnum
from pathlib import Path

import httpx
from filelock import FileLock, Timeout

from medloop.config import Settings
from medloop.continual import dataset as incremental
from medloop.continual.registry import AdapterRecord, AdapterRegistry, Status
from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.knowledge.ingest import FileOutcome
from medloop.retrieval import sync_index


class Outcome(StrEnum):
    """What one run of a job did (`medloop scheduler status`, the job's JSON)."""

    OK = "ok"
    FAILED_SOME = "failed-some"  # ingest: some files failed, the rest went in
    NOTHING_NEW = "nothing-new"
    SKIPPED = "skipped"  # another retraining holds the lock
    PROMOTED = "promoted"
    REJECTED = "rejected"


def ingest_and_index(settings: Settings, paths: list[Path], *, recursive: bool = False, on_start=None, on_file=None,
                     on_progress=None):
    """Files -> store -> index: what `medloop ingest` and the scheduler's ingest job both run."""
    with KnowledgeStore(settings.knowledge_db) as store:
        report = ingest_paths(store, paths, recursive=recursive, chunk_size=settings.chunk_size,
                              chunk_overlap=settings.chunk_overlap, on_start=on_start, on_file=on_file)
        return report, sync_index(settings, store, on_progress=on_progress)


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # keep both: the same name can arrive twice
        target = folder / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
    shutil.move(str(path), target)
    return target


def ingest_inbox(settings: Settings) -> dict:
    """Ingest everything in inbox/guidelines/; move each file to processed/ or to failed/ beside a .error.txt."""
    inbox = settings.inbox_dir / "guidelines"
    inbox.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in inbox.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        return {"outcome": Outcome.NOTHING_NEW, "files": 0}
    report, synced = ingest_and_index(settings, files)
    for result in report.files:
        if result.outcome == FileOutcome.FAILED:
            moved = _move(result.path, settings.failed_dir)
            moved.with_name(moved.name + ".error.txt").write_text(result.error + "\n")
        elif result.path.exists():
            _move(result.path, settings.processed_dir / "guidelines")
    counts = dict(report.counts)
    return {"outcome": Outcome.FAILED_SOME if report.failed else Outcome.OK, "files": len(files), **counts,
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


def gate(base_model: str, candidate: Path, live: Path | None, heldout: list, regression: list,
         tolerance: float) -> dict:
    """Promote only if the candidate beats the live adapter on new data and is no worse (within tolerance)
    on the regression set of earlier data. Eval loss on assistant tokens, lower is better."""
    from medloop.training.evaluate import eval_loss, load_for_eval

    def losses(adapter: Path | None) -> tuple[float, float | None]:
        model, tokenizer = load_for_eval(base_model, adapter)
        new = eval_loss(model, tokenizer, heldout)["loss"]
        reg = eval_loss(model, tokenizer, regression)["loss"] if regression else None
        return new, reg

    cand_new, cand_reg = losses(candidate)
    live_new, live_reg = losses(live)
    improves = math.isfinite(cand_new) and cand_new < live_new
    keeps = cand_reg is None or (math.isfinite(cand_reg) and cand_reg <= live_reg * (1 + tolerance))
    return {
        "promote": bool(improves and keeps),
        "new_data": {"candidate": cand_new, "live": live_new, "improves": improves},
        "regression": {"candidate": cand_reg, "live": live_reg, "tolerance": tolerance, "within": keeps},
        "compared_with": str(live) if live else "base model",
    }


def hot_load(settings: Settings, record: AdapterRecord) -> str:
    """Tell the running server to serve this version under the stable name; it keeps serving meanwhile."""
    headers = {"Authorization": f"Bearer {settings.admin_key.get_secret_value()}"} if settings.admin_key else {}
    body = {"action": "load", "name": settings.served_adapter_name, "path": record.path, "version": record.version}
    try:
        r = httpx.post(settings.server_url.rstrip("/") + "/admin/adapters", json=body, headers=headers, timeout=300)
    except httpx.HTTPError as e:
        return f"server not reachable ({type(e).__name__}): it loads the live adapter when it next starts"
    if r.status_code != 200:
        return f"server refused the adapter ({r.status_code}): {r.text[:200]}"
    return "hot-loaded"


def retrain(settings: Settings, *, retriever=None, log=print) -> dict:
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
        data = incremental.build(settings, since=live.created if live else "", retriever=retriever)
        if data is None:
            return {"outcome": Outcome.NOTHING_NEW}
        record = registry.new_version(live.version if live else None, data.manifest)
        log(f"{record.version}: training on {data.manifest['counts']} from {live.version if live else 'scratch'}")
        try:
            return _train_gate_promote(settings, registry, record, live, data, log)
        except Exception as e:
            record.status, record.pid = Status.FAILED, None
            record.decision = {"reason": f"{type(e).__name__}: {e}"}
            registry.save(record)
            raise
        finally:
            for f in data.inbox_files:  # consumed either way: the manifest says by which version
                if f.exists():
                    _move(f, settings.processed_dir / "sft")


def _train_gate_promote(settings, registry, record, live, data, log) -> dict:
    from medloop.training import make_config, train

    base_model = settings.train_base_model or settings.base_model
    files = data.write(Path(record.path) / "data")
    overrides = {"val_size": 0, "swanlab_mode": settings.swanlab_mode, **settings.train_overrides}
    config = make_config(settings.train_preset, base_model=base_model, data=[files["train"]],
                         output_dir=Path(record.path), init_adapter=Path(live.path) if live else None, **overrides)
    result = train(config, log=log)
    shutil.rmtree(Path(record.path) / "checkpoints", ignore_errors=True)
    heldout = data.heldout or data.train  # a single new sample: judged on what it has
    decision = gate(base_model, Path(record.path), Path(live.path) if live else None, heldout, data.regression,
                    settings.gate_tolerance)
    record.metrics = {"train_loss": result.train_loss, "steps": result.steps, **{
        f"heldout_loss_{k}": v for k, v in decision["new_data"].items() if k != "improves"}}
    record.decision, record.pid = decision, None
    if not decision["promote"]:
        record.status = Status.REJECTED
        registry.save(record)
        log(f"{record.version}: rejected ({decision['new_data']}, {decision['regression']})")
        return {"outcome": Outcome.REJECTED, "version": record.version, "decision": decision}
    record.status = Status.CANDIDATE
    registry.save(record)
    registry.promote(record.version)
    with open(registry.regression_file, "a") as f:  # this run's held-out data guards every later run
        f.write(files["heldout"].read_text())
    served = hot_load(settings, record)
    log(f"{record.version}: promoted; {served}")
    return {"outcome": Outcome.PROMOTED, "version": record.version, "decision": decision, "serving": served}
