"""The continual loop end to end on CPU: inbox -> ingest -> cited; SFT inbox -> QLoRA from live -> gate -> hot-swap."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from pydantic import SecretStr

from conftest import GUIDELINES, SFT, LiveServer
from medloop.continual import AdapterRegistry, ingest_inbox, retrain
from medloop.continual.loop import training_lock
from medloop.continual.scheduler import ensure_jobs, make_scheduler, run_job, status
from medloop.retrieval import Retriever
from medloop.serving import build_app
from medloop.serving.local_engine import LocalEngine

FAST_TRAINING = {"max_steps": 8, "learning_rate": 5e-3, "batch_size": 4, "grad_accum": 1, "logging_steps": 2,
                 "max_length": 256, "save_steps": 4}


@pytest.fixture
def loop_settings(settings, tiny_qwen3, monkeypatch):
    settings.base_model = settings.train_base_model = str(tiny_qwen3)
    settings.train_preset = "low-mem"
    settings.train_overrides = dict(FAST_TRAINING)
    settings.admin_key = SecretStr("k-admin")  # the loop hot-loads through the server's admin endpoint
    monkeypatch.setenv("MEDLOOP_ADMIN_KEY", "k-admin")  # the CLI reads it from the environment
    (settings.inbox_dir / "guidelines").mkdir(parents=True)
    (settings.inbox_dir / "sft").mkdir(parents=True)
    return settings


def ask(client, question, model):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                          max_tokens=6, temperature=0)


def test_the_loop_end_to_end(loop_settings, tiny_qwen3, embedder):
    s = loop_settings
    retriever = Retriever(s, embedder=embedder)
    engine = LocalEngine(str(tiny_qwen3), served_name="qwen3-tiny")
    with LiveServer(build_app(s, engine, retriever)) as server:
        s.server_url = server.url
        client = server.client()

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

        # 2. SFT samples arrive; retrain: trained, gated against the base, promoted, hot-loaded
        shutil.copy(SFT / "sharegpt_zh_en.jsonl", s.inbox_dir / "sft")
        shutil.copy(SFT / "alpaca_zh_en.jsonl", s.inbox_dir / "sft")
        first = retrain(s, retriever=retriever)
        assert first["outcome"] == "promoted" and first["version"] == "v1", first
        assert first["serving"] == "hot-loaded"
        models = {m.id: m.model_extra for m in client.models.list().data}
        assert models["medical"]["version"] == "v1"
        v1_answer = ask(client, "你好", "medical").choices[0].message.content
        registry = AdapterRegistry(s.adapters_dir)
        record = registry.get("v1")
        assert record.status == "live" and record.parent is None
        counts = record.manifest["counts"]
        assert counts["new"] == 16 and counts["heldout"] > 0 and counts["evidence_augmented"] > 0
        assert all(len(h) == 64 for h in record.manifest["inbox_files"].values())
        assert json.loads((s.adapters_dir / "v1" / "medloop_run.json").read_text())["config"]["quantize"]
        assert not list((s.inbox_dir / "sft").iterdir())

        # 3. a candidate made worse on purpose is rejected; v1 keeps serving
        shutil.copy(SFT / "messages_think_zh_en.jsonl", s.inbox_dir / "sft")
        s.train_overrides = {**FAST_TRAINING, "learning_rate": 30.0}
        second = retrain(s, retriever=retriever)
        assert second["outcome"] == "rejected", second
        rejected = registry.get("v2")
        assert rejected.status == "rejected" and rejected.parent == "v1"
        assert rejected.manifest["counts"]["replay"] > 0  # earlier data replayed
        assert registry.live().version == "v1"
        assert ask(client, "你好", "medical").choices[0].message.content == v1_answer

        # 4. nothing new: nothing to do
        assert retrain(s, retriever=retriever)["outcome"] == "nothing-new"

    from medloop.continual.registry import plot_loop

    picture = plot_loop(registry, s.home / "loop.png")
    assert picture.stat().st_size > 5000


def test_kill_during_training_leaves_live_adapter_and_recoverable_lock(loop_settings, tmp_path):
    s = loop_settings
    shutil.copy(SFT / "alpaca_zh_en.jsonl", s.inbox_dir / "sft")
    env = {**os.environ, "MEDLOOP_HOME": str(s.home), "MEDLOOP_BASE_MODEL": s.base_model,
           "MEDLOOP_TRAIN_PRESET": "low-mem", "MEDLOOP_SERVER_URL": "http://127.0.0.1:9",
           "MEDLOOP_TRAIN_OVERRIDES": json.dumps({**FAST_TRAINING, "max_steps": 500})}
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
    s.train_overrides = dict(FAST_TRAINING)
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


def test_adapters_cli_and_server_pick_up_live_adapter(loop_settings, tiny_qwen3):
    from typer.testing import CliRunner

    from conftest import registry_with_candidates
    from medloop.cli import app, build_server

    s = loop_settings
    registry_with_candidates(s.adapters_dir, tiny_qwen3)
    runner = CliRunner()
    assert "live: v1" in runner.invoke(app, ["adapters", "promote", "v1"]).output
    assert "live: v2" in runner.invoke(app, ["adapters", "promote", "v2"]).output
    listing = runner.invoke(app, ["adapters", "list"]).output
    assert "v1" in listing and "retired" in listing and "live" in listing
    server = build_server(s, engine="local", base_model=str(tiny_qwen3), adapters={}, rag=False, vllm_url="",
                          launch_vllm=False, port=0)
    with LiveServer(server) as live:
        assert "medical" in {m.id for m in live.client().models.list().data}
        s.server_url = live.url
        os.environ["MEDLOOP_SERVER_URL"] = live.url
        try:
            out = runner.invoke(app, ["adapters", "rollback"]).output
        finally:
            del os.environ["MEDLOOP_SERVER_URL"]
        assert "live: v1; hot-loaded" in out
        assert httpx.get(live.url + "/v1/models").json()["data"][1]["version"] == "v1"
    assert runner.invoke(app, ["adapters", "show", "v9"]).exit_code == 2


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
