"""The monthly job: train on the month's data from the live adapter, gate it, promote it, hot-load it into the
running server (one retraining at a time)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medloop.config import Settings
from medloop.continual import dataset as incremental
from medloop.continual import gate
from medloop.continual.hotswap import hot_load
from medloop.continual.inbox import Outcome, move_to
from medloop.continual.mcq import load_mcq
from medloop.continual.registry import AdapterRegistry, Status
from medloop.locks import exclusive


def training_lock(settings: Settings):
    """One retraining at a time: yields False while another holds it."""
    return exclusive(settings.adapters_dir / ".train.lock")


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
        mcq_items = load_mcq(settings.gate.mcq) if settings.gate.mcq else []
        data = incremental.build(settings, since=live.created if live else "", retriever=retriever,
                                 replay_from=Path(live.path) / "data" / "train.jsonl" if live else None,
                                 gate_questions=[item.question for item in mcq_items])
        if data is None:
            return {"outcome": Outcome.NOTHING_NEW}
        new = data.manifest["counts"]["train_new"] + data.manifest["counts"]["heldout"]
        if new < settings.loop.min_new_samples or not data.heldout:
            reason = (f"too little new data: {new} usable new samples (loop.min_new_samples "
                      f"{settings.loop.min_new_samples}, "
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
                move_to(f, settings.processed_dir / "sft")
            elif (moved := move_to(f, settings.failed_dir / "sft")) is not None:
                moved.with_name(moved.name + ".reason.txt").write_text(
                    f"{record.version} rejected by the gate: {json.dumps(result['decision'], default=str)}\n"
                    f"move this file back to {settings.inbox_dir / 'sft'} to train on it again\n")
        return result


def _train_gate_promote(settings, registry, record, live, data, retriever, mcq_items, log) -> dict:
    from medloop import models
    from medloop.training import make_config, train

    # a GGUF base (the embedded default is one) trains, and is judged, as its dequantised folder kept in the home
    base_model = models.trainable(settings.training.base_model or settings.serving.base_model, settings.models_dir)
    files = data.write(Path(record.path) / "data")
    overrides = {"val_size": 0, "swanlab_mode": settings.training.swanlab_mode, **settings.training.overrides}
    config = make_config(settings.training.preset, base_model=base_model, data=[files["train"]],
                         output_dir=Path(record.path), init_adapter=Path(live.path) if live else None, **overrides)
    result = train(config, log=log)
    shutil.rmtree(Path(record.path) / "checkpoints", ignore_errors=True)
    signals, measured = gate.measure(base_model, Path(record.path), Path(live.path) if live else None,
                                     heldout=data.heldout, regression=data.regression, quantize=config.quantize,
                                     new=data.new if settings.gate.new_facts else None,
                                     stated_share=settings.gate.stated_share, mcq_items=mcq_items,
                                     retriever=retriever, k=settings.serving.evidence_k,
                                     fact_tokens=settings.gate.fact_tokens)
    signals.update(gate.data_signals(data.new, retriever, settings.serving.evidence_k))
    decision = {**gate.decide(signals, settings.gate), **measured}
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
