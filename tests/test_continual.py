"""The continual loop end to end on CPU: inbox -> ingest -> cited; SFT inbox -> QLoRA from live -> gate -> hot-swap."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from medloop.continual import AdapterRegistry, ingest_inbox, retrain
from medloop.continual.dataset import normalised
from medloop.continual.monthly import training_lock
from medloop.continual.scheduler import ensure_jobs, make_scheduler, run_job, status
from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.retrieval import Retriever, sync_index
from medloop.serving import build_app
from medloop.serving.local_engine import LocalEngine
from medloop.testing import GUIDELINES, SFT, LiveServer, paraphrased_month


def write_jsonl(path, rows) -> None:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


FAST_TRAINING = {"max_steps": 8, "learning_rate": 5e-3, "batch_size": 4, "grad_accum": 1, "logging_steps": 2,
                 "max_length": 256, "save_steps": 4}
GOOD_MONTH = {**FAST_TRAINING, "max_steps": 16, "learning_rate": 1e-2}


@pytest.fixture
def loop_settings(settings, tiny_qwen3, monkeypatch):
    settings.serving.base_model = settings.training.base_model = str(tiny_qwen3)
    settings.training.preset = "low-mem"
    settings.training.overrides = dict(FAST_TRAINING)
    settings.serving.admin_key = SecretStr("k-admin")  # the loop hot-loads through the server's admin endpoint
    settings.loop.inbox_settle_s = 0  # files are written whole before each job runs
    # The random stand-in says nothing it learns (its loss falls, its answers stay noise): the gate would rightly
    # reject every month on new_facts. These tests are about the loop; the rule is tested where a model learns
    # (test_gate.py, test_sabotage.py, and the monthly job on SmolLM2 in test_front_door.py).
    settings.gate.new_facts = False
    monkeypatch.setenv("MEDLOOP_SERVING__ADMIN_KEY", "k-admin")  # the CLI reads it from the environment
    (settings.inbox_dir / "guidelines").mkdir(parents=True)
    (settings.inbox_dir / "sft").mkdir(parents=True)
    return settings


def ask(client, question, model):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                          max_tokens=6, temperature=0)


@pytest.mark.slow
def test_the_loop_end_to_end(loop_settings, tiny_qwen3, embedder):
    s = loop_settings
    retriever = Retriever(s, embedder=embedder)
    engine = LocalEngine(str(tiny_qwen3), served_name="qwen3-tiny")
    with LiveServer(build_app(s, engine, retriever)) as server:
        s.loop.server_url = server.url
        client = server.client()

        # the guideline index the deployment starts with: every sample guideline but influenza
        with KnowledgeStore(s.knowledge_db) as store:
            ingest_paths(store, [p for p in sorted(GUIDELINES.iterdir()) if p.name != "cn-influenza-2025.md"])
            sync_index(s, store, embedder=embedder)

        # 1. a new guideline (and a broken file) arrive; the next answer cites the guideline
        shutil.copy(GUIDELINES / "cn-influenza-2025.md", s.inbox_dir / "guidelines")
        (s.inbox_dir / "guidelines" / "broken.md").write_bytes(b"\x00\x00binary")
        result = ingest_inbox(s)
        assert result["added"] == 1 and result["failed"] == 1
        assert (s.processed_dir / "guidelines" / "cn-influenza-2025.md").exists()
        assert "binary" in (s.failed_dir / "broken.md.error.txt").read_text()
        assert not list((s.inbox_dir / "guidelines").iterdir())
        evidence = ask(client, "流感的抗病毒治疗", "qwen3-tiny").model_extra["evidence"]
        assert evidence[0]["guideline_id"] == "cn-influenza"

        # 2. SFT samples arrive (a month whose held-out questions are new wordings of what it teaches, plus
        # the same 8 Q&A in two layouts); retrain: trained, gated against the base, promoted, hot-loaded
        write_jsonl(s.inbox_dir / "sft" / "month1.jsonl", paraphrased_month())
        shutil.copy(SFT / "sharegpt_zh_en.jsonl", s.inbox_dir / "sft")
        shutil.copy(SFT / "alpaca_zh_en.jsonl", s.inbox_dir / "sft")
        s.training.overrides = GOOD_MONTH
        first = retrain(s, retriever=retriever)
        assert first["outcome"] == "promoted" and first["version"] == "v1", first
        assert first["serving"] == "hot-loaded"
        assert first["decision"]["decided_by"] == "all signals passed"
        assert set(first["decision"]["signals"]) == {"new_data_loss", "in_domain", "evidence_agreement",
                                                     "regression_loss", "mcq_accuracy", "fact_recall"}
        assert first["decision"]["signals"]["mcq_accuracy"]["n"] >= 40 and first["decision"]["quantized"]
        models = {m.id: m.model_extra for m in client.models.list().data}
        assert models["medical"]["version"] == "v1"
        v1_answer = ask(client, "你好", "medical").choices[0].message.content
        registry = AdapterRegistry(s.adapters_dir)
        record = registry.get("v1")
        assert record.status == "live" and record.parent is None
        counts = record.manifest["counts"]
        assert counts["loaded"] == 52 and counts["new"] == 44  # the same Q&A in two layouts counts once
        assert counts["heldout"] > 0 and counts["evidence_augmented"] > 0
        data = Path(record.path) / "data"
        trained = {normalised(json.loads(x)["messages"]) for x in (data / "train.jsonl").read_text().splitlines()}
        held = {normalised(json.loads(x)["messages"]) for x in (data / "heldout.jsonl").read_text().splitlines()}
        assert held and not held & trained  # what judges the version never trained it
        assert all(len(h) == 64 for h in record.manifest["inbox_files"].values())
        assert json.loads((s.adapters_dir / "v1" / "medloop_run.json").read_text())["config"]["quantize"]
        assert not list((s.inbox_dir / "sft").iterdir())

        # 3. a candidate made worse on purpose is rejected; v1 keeps serving
        shutil.copy(SFT / "messages_think_zh_en.jsonl", s.inbox_dir / "sft")
        s.training.overrides = {**GOOD_MONTH, "learning_rate": 30.0}
        second = retrain(s, retriever=retriever)
        assert second["outcome"] == "rejected", json.dumps(second["decision"], default=str)
        rejected = registry.get("v2")
        assert rejected.status == "rejected" and rejected.parent == "v1"
        assert rejected.manifest["counts"]["replay"] > 0  # earlier data replayed
        assert registry.live().version == "v1"
        assert ask(client, "你好", "medical").choices[0].message.content == v1_answer
        # the rejected month's data is kept, with the reason, to be moved back after a fix
        assert not list((s.inbox_dir / "sft").iterdir())
        assert "rejected by the gate" in (s.failed_dir / "sft" / "messages_think_zh_en.jsonl.reason.txt").read_text()

        # 4. nothing new: nothing to do
        assert retrain(s, retriever=retriever)["outcome"] == "nothing-new"

    from medloop.continual.plots import plot_loop

    picture = plot_loop(registry, s.home / "loop.png")
    assert picture.stat().st_size > 5000


@pytest.mark.slow
def test_kill_during_training_leaves_live_adapter_and_recoverable_lock(loop_settings, tmp_path):
    s = loop_settings
    shutil.copy(SFT / "alpaca_zh_en.jsonl", s.inbox_dir / "sft")
    env = {**os.environ, "MEDLOOP_HOME": str(s.home), "MEDLOOP_SERVING__BASE_MODEL": s.serving.base_model,
           "MEDLOOP_TRAINING__PRESET": "low-mem", "MEDLOOP_LOOP__SERVER_URL": "http://127.0.0.1:9",
           "MEDLOOP_TRAINING__OVERRIDES": json.dumps({**FAST_TRAINING, "max_steps": 500})}
    proc = subprocess.Popen([sys.executable, "-m", "medloop.cli", "scheduler", "run", "retrain"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    registry = AdapterRegistry(s.adapters_dir)
    deadline = time.time() + 180
    while time.time() < deadline and not list((s.adapters_dir / "v1").glob("checkpoints/checkpoint-*")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert registry.get("v1").status == "training" and registry.live() is None
    with training_lock(s) as acquired:  # the OS released the dead process's lock
        assert acquired
    s.training.overrides = dict(FAST_TRAINING)
    s.gate.mcq = None  # what is asserted is the cleanup and the new version, not the gate (test_the_loop_end_to_end)
    result = retrain(s)  # cleans up, then trains again from the inbox files the killed run never consumed
    assert registry.get("v1").status == "failed"
    assert result["version"] == "v2" and result["outcome"] in {"promoted", "rejected"}


def test_scheduler_keeps_its_schedule_across_restarts(loop_settings):
    s = loop_settings
    first = make_scheduler(s)
    first.start(paused=True)
    ensure_jobs(first, s)
    before = {j.id: j.next_run_time for j in first.get_jobs()}
    first.shutdown()
    assert set(before) == {"ingest", "retrain"}
    assert before["retrain"].day == 1 and before["retrain"].hour == 3
    again = make_scheduler(s)
    again.start(paused=True)
    ensure_jobs(again, s)
    assert {j.id: j.next_run_time for j in again.get_jobs()} == before
    again.shutdown()
    run_job("ingest")
    rows = {r["job"]: r for r in status(s)}
    assert rows["ingest"]["last_outcome"] == "nothing-new" and rows["retrain"]["next_run"]


def test_registry_promote_and_rollback(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    for _ in range(2):
        record = registry.new_version(None, {})
        record.status, record.pid = "candidate", None
        registry.save(record)
    registry.promote("v1")
    registry.promote("v2")
    assert registry.live().version == "v2" and registry.get("v1").status == "retired"
    assert registry.rollback().version == "v1"
    assert registry.get("v2").status == "retired" and registry.live().version == "v1"
    with pytest.raises(ValueError):
        registry.rollback()


@pytest.mark.slow
def test_adapters_cli_and_server_pick_up_live_adapter(loop_settings, tiny_qwen3):
    from typer.testing import CliRunner

    from medloop.cli import app
    from medloop.cli.serve import build_server
    from medloop.testing import registry_with_candidates

    s = loop_settings
    registry_with_candidates(s.adapters_dir, tiny_qwen3)
    runner = CliRunner()
    assert "live: v1" in runner.invoke(app, ["adapters", "promote", "v1"]).output
    assert "live: v2" in runner.invoke(app, ["adapters", "promote", "v2"]).output
    listing = runner.invoke(app, ["adapters", "list"]).output
    assert "v1" in listing and "retired" in listing and "live" in listing
    server = build_server(s, engine="local", base_model=str(tiny_qwen3), adapters={}, rag=False)
    with LiveServer(server) as live:
        assert "medical" in {m.id for m in live.client().models.list().data}
        s.loop.server_url = live.url
        os.environ["MEDLOOP_LOOP__SERVER_URL"] = live.url
        try:
            out = runner.invoke(app, ["adapters", "rollback"]).output
        finally:
            del os.environ["MEDLOOP_LOOP__SERVER_URL"]
        assert "live: v1; hot-loaded" in out
        assert httpx.get(live.url + "/v1/models").json()["data"][1]["version"] == "v1"
    assert runner.invoke(app, ["adapters", "show", "v9"]).exit_code == 2


@pytest.mark.slow
def test_scheduler_service_stops_cleanly_on_sigterm(loop_settings):
    env = {**os.environ, "MEDLOOP_HOME": str(loop_settings.home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medloop.cli", "scheduler", "start"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline and not any(line.startswith("retrain:") for line in lines):
        lines.append(proc.stdout.readline())
    assert any("next run" in line for line in lines), lines
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert {r["job"] for r in status(loop_settings) if r["next_run"]} == {"ingest", "retrain"}


@pytest.mark.slow
def test_a_guideline_dropped_into_the_inbox_is_cited_within_a_minute(loop_settings, tiny_qwen3, embedder):
    s = loop_settings
    with KnowledgeStore(s.knowledge_db) as store:
        ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md"])
        sync_index(s, store, embedder=embedder)
    env = {**os.environ, "MEDLOOP_HOME": str(s.home), "MEDLOOP_LOOP__INGEST_POLL_SECONDS": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medloop.cli", "scheduler", "start"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    engine = LocalEngine(str(tiny_qwen3), served_name="qwen3-tiny")
    try:
        with LiveServer(build_app(s, engine, Retriever(s, embedder=embedder))) as server:
            client = server.client()
            assert ask(client, "流感的抗病毒治疗", "qwen3-tiny").model_extra["evidence"] == []
            dropped = time.monotonic()
            shutil.copy(GUIDELINES / "cn-influenza-2025.md", s.inbox_dir)  # inbox/ itself, not inbox/guidelines/
            (s.inbox_dir / "notes.xyz").write_text("what is this?")
            cited = None
            while cited is None and time.monotonic() - dropped < 60:
                evidence = ask(client, "流感的抗病毒治疗", "qwen3-tiny").model_extra["evidence"]
                if evidence and evidence[0]["guideline_id"] == "cn-influenza":
                    cited = time.monotonic() - dropped
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert cited is not None and cited < 60
    assert (s.processed_dir / "guidelines" / "cn-influenza-2025.md").exists()
    note = (s.failed_dir / "notes.xyz.error.txt").read_text()
    assert "inbox/guidelines" in note and "inbox/sft" in note


def test_inbox_routes_files_by_what_they_are(loop_settings):
    from medloop.continual.inbox import route_inbox

    s = loop_settings
    shutil.copy(SFT / "alpaca_zh_en.jsonl", s.inbox_dir)
    shutil.copy(GUIDELINES / "cn-influenza-2025.md", s.inbox_dir)
    (s.inbox_dir / "guideline.jsonl").write_text(json.dumps({"id": "g", "text": "流感指南"}) + "\n")
    (s.inbox_dir / "mystery.jsonl").write_text(json.dumps({"foo": 1}) + "\n")
    assert route_inbox(s) == {"guidelines": 2, "sft": 1, "failed": 1}
    assert (s.inbox_dir / "sft" / "alpaca_zh_en.jsonl").exists()
    assert (s.inbox_dir / "guidelines" / "guideline.jsonl").exists()
    assert (s.failed_dir / "mystery.jsonl.error.txt").exists()


@pytest.mark.slow
def test_a_failed_hot_load_is_promoted_not_live_visible_and_retried(loop_settings, tiny_qwen3):
    from typer.testing import CliRunner

    from medloop.cli import app
    from medloop.cli.serve import build_server
    from medloop.continual.hotswap import hot_load
    from medloop.testing import registry_with_candidates

    s = loop_settings
    registry = registry_with_candidates(s.adapters_dir, tiny_qwen3, seeds=(1,))
    registry.promote("v1")
    s.loop.server_url = "http://127.0.0.1:9"  # the server is down at promotion time
    assert "not reachable" in hot_load(s, registry.get("v1"))
    assert registry.pending_hot_load().version == "v1"
    assert "promoted," in CliRunner().invoke(app, ["adapters", "list"]).output
    assert any(r["job"] == "hot-load" and r["last_outcome"] == "v1 promoted, not live" for r in status(s))
    server = build_server(s, engine="local", base_model=str(tiny_qwen3), adapters={}, rag=False)
    with LiveServer(server) as live:
        assert 'medloop_registry_live_serving{version="v1"} 0.0' in httpx.get(live.url + "/metrics").text
        s.loop.server_url = live.url
        assert ingest_inbox(s)["serving"] == "hot-loaded"  # the next poll retries it
        assert registry.pending_hot_load() is None and registry.shown_status(registry.get("v1")) == "live"
        assert 'medloop_registry_live_serving{version="v1"} 1.0' in httpx.get(live.url + "/metrics").text
        assert {m["id"]: m.get("version") for m in httpx.get(live.url + "/v1/models").json()["data"]}["medical"] == "v1"
    assert not any(r["job"] == "hot-load" for r in status(s))


def test_a_month_with_too_little_new_data_is_skipped_and_keeps_its_files(loop_settings):
    s = loop_settings
    rows = (SFT / "alpaca_zh_en.jsonl").read_text().splitlines()[:3]
    (s.inbox_dir / "sft" / "few.jsonl").write_text("\n".join(rows) + "\n")
    result = retrain(s)
    assert result["outcome"] == "too-little-data" and "min_new_samples" in result["reason"]
    assert (s.inbox_dir / "sft" / "few.jsonl").exists() and AdapterRegistry(s.adapters_dir).versions() == []


def test_held_out_and_regression_rows_are_never_trained_or_replayed(loop_settings):
    from medloop.continual import dataset

    s = loop_settings
    regression = [json.loads(x) for x in (SFT / "alpaca_zh_en.jsonl").read_text().splitlines()[:2]]
    from medloop.training.data import load_samples

    guarded = load_samples([SFT / "alpaca_zh_en.jsonl"])[0][:2]
    AdapterRegistry(s.adapters_dir).regression_file.write_text(
        "\n".join(json.dumps({"messages": m}, ensure_ascii=False) for m in guarded) + "\n")
    (s.processed_dir / "sft").mkdir(parents=True)
    shutil.copy(SFT / "sharegpt_zh_en.jsonl", s.processed_dir / "sft")  # earlier months: replay candidates
    shutil.copy(SFT / "messages_think_zh_en.jsonl", s.inbox_dir / "sft")  # the same Q&A, with <think> blocks
    s.loop.replay_fraction = 1.0
    data = dataset.build(s, since="")
    judged = {dataset.normalised(m) for m in data.regression + data.heldout}
    assert len(regression) == 2 and data.heldout
    assert not any(dataset.normalised(m) in judged for m in data.train)
    assert data.manifest["counts"]["replay"] > 0


def test_one_scheduler_per_home_and_outcomes_survive_a_full_disk(loop_settings, monkeypatch):
    import sqlite3

    from filelock import FileLock

    from medloop.continual import scheduler

    s = loop_settings
    with FileLock(s.home / ".scheduler.lock"), pytest.raises(scheduler.SchedulerRunning, match="another scheduler"):
        scheduler.start(s)
    real = scheduler._runs_db
    calls = {"n": 0}

    def full_once(settings):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real(settings)

    monkeypatch.setattr(scheduler, "_runs_db", full_once)
    monkeypatch.setenv("MEDLOOP_HOME", str(s.home))
    assert scheduler.run_job("ingest")["outcome"] == "nothing-new"  # the disk is full: not recorded yet
    scheduler.run_job("ingest")
    with sqlite3.connect(s.scheduler_db) as db:
        assert db.execute("SELECT COUNT(*) FROM job_runs WHERE job='ingest'").fetchone()[0] == 2


def test_after_a_restart_models_shows_the_live_registry_version(settings, tiny_qwen3, monkeypatch):
    """Measured before: after a kill -9 and a restart v2 was live and served, and `/v1/models` said null."""
    import httpx

    from medloop.cli.serve import build_server
    from medloop.testing import LiveServer, registry_with_candidates

    registry = registry_with_candidates(settings.adapters_dir, tiny_qwen3)
    registry.promote("v1")
    registry.promote("v2")
    application = build_server(settings, engine="local", base_model=str(tiny_qwen3), adapters={}, rag=False)
    with LiveServer(application) as live:  # a fresh process's server, as after a restart
        cards = {m["id"]: m for m in httpx.get(live.url + "/v1/models").json()["data"]}
    assert cards[settings.loop.adapter_name]["version"] == "v2"
