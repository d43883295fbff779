"""Real `kill -9` of a child process at named points between two writes (medloop.atomic.failpoint), then a
run that completes: what readers see in between is always the old version, whole."""

import os
import subprocess
import sys
import time

import pytest

from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.retrieval import Retriever, sync_index
from medloop.retrieval.segments import current_version, load_index
from medloop.testing import GUIDELINES, registry_with_candidates


def kill_at(failpoint: str, cmd: list[str], env: dict) -> None:
    """Run cmd until it reports reaching the failpoint, then SIGKILL it there."""
    proc = subprocess.Popen(cmd, env={**env, "MEDLOOP_FAILPOINT": failpoint}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    try:
        for line in proc.stderr:
            if line.strip() == f"failpoint {failpoint}":
                break
            if time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"the child ended without reaching {failpoint} (exit {proc.wait()})")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9


@pytest.mark.slow
@pytest.mark.parametrize("failpoint", ["index-written", "index-renamed"])
def test_kill_9_while_publishing_an_index_keeps_the_old_one_live(settings, embedder, failpoint):
    with KnowledgeStore(settings.knowledge_db) as store:
        ingest_paths(store, [GUIDELINES / "cn-hypertension-2018.md"])
        old = sync_index(settings, store, embedder=embedder)
    env = {**os.environ, "MEDLOOP_HOME": str(settings.home)}
    newer = GUIDELINES / "cn-hypertension-2024.md"
    kill_at(failpoint, [sys.executable, "-m", "medloop.cli", "ingest", str(newer)], env)
    assert current_version(settings.index_dir) == old.version  # readers still on the old version, whole
    assert load_index(settings.index_dir).meta["count"] == old.total
    retriever = Retriever(settings, embedder=embedder)
    # the old index answers whole (its 2018 text is already superseded in the store, which committed first)
    assert retriever.search("降压目标", k=1, include_superseded=True)[0].chunk.version == "2018"
    rerun = subprocess.run([sys.executable, "-m", "medloop.cli", "ingest", str(newer)], env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    with KnowledgeStore(settings.knowledge_db) as store:
        assert load_index(settings.index_dir).meta["count"] == len(store.chunks())
    assert not [p for p in settings.index_dir.iterdir() if p.name.startswith(".tmp-")]
    assert retriever.search("降压目标", k=1)[0].chunk.version == "2024"


@pytest.mark.slow
@pytest.mark.parametrize("failpoint, live_after_kill", [("promote-pointer", "v1"), ("promote-records", "v2")])
def test_kill_9_during_promotion_leaves_one_consistent_live_adapter(settings, tiny_qwen3, failpoint,
                                                                   live_after_kill):
    registry = registry_with_candidates(settings.adapters_dir, tiny_qwen3)
    registry.promote("v1")
    code = (f"from pathlib import Path; from medloop.continual import AdapterRegistry; "
            f"AdapterRegistry(Path({str(settings.adapters_dir)!r})).promote('v2')")
    kill_at(failpoint, [sys.executable, "-c", code], dict(os.environ))
    assert registry.live().version == live_after_kill  # the pointer alone decides, whole
    statuses = {r.version: r.status for r in registry.versions()}
    assert list(statuses.values()).count("live") == 1 and statuses[live_after_kill] == "live"
    assert registry.promote("v2").version == "v2" and registry.live().version == "v2"
    assert {r.version: r.status for r in registry.versions()} == {"v1": "retired", "v2": "live"}
    assert not [p for p in settings.adapters_dir.iterdir() if p.name.startswith(".live.json.")]


def medloop(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """The installed command as a user runs it (its error handling included), not the Typer app in-process."""
    return subprocess.run([sys.executable, "-m", "medloop.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_rerun_loses_nothing(settings, tmp_path):
    env = {**os.environ, "MEDLOOP_HOME": str(settings.home), "MEDLOOP_FAILPOINT": "index-written:enospc"}
    full = medloop(["ingest", str(GUIDELINES / "cn-influenza-2025.md")], env)
    assert full.returncode == 1 and "Traceback" not in full.stderr
    message = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "no space left" in message[0] and str(settings.home / "index") in message[0]
    assert current_version(settings.index_dir) is None  # nothing half-published
    del env["MEDLOOP_FAILPOINT"]
    assert medloop(["ingest", str(GUIDELINES / "cn-influenza-2025.md")], env).returncode == 0
    index = load_index(settings.index_dir)
    with KnowledgeStore(settings.knowledge_db) as store:
        assert index.count == store.chunk_count() > 0


@pytest.mark.slow
def test_a_bad_setting_is_named_in_one_line(settings):
    env = {**os.environ, "MEDLOOP_HOME": str(settings.home), "MEDLOOP_LOOP__RETRAIN_CRON": "0 3 1 13 *"}
    bad = medloop(["scheduler", "status"], env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "setting loop.retrain_cron" in bad.stderr and "not a crontab schedule" in bad.stderr


@pytest.mark.slow
def test_a_setting_in_the_flat_layout_of_earlier_releases_is_refused_with_its_new_place(settings, tmp_path):
    """Ignored, `gate_margin = 0.05` would leave the gate at its default without a word."""
    old = tmp_path / "medloop.toml"
    old.write_text("gate_margin = 0.05\n")
    env = {**os.environ, "MEDLOOP_HOME": str(settings.home), "MEDLOOP_CONFIG": str(old)}
    bad = medloop(["scheduler", "status"], env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "`gate_margin` is read no more" in bad.stderr and "`margin` under [gate]" in bad.stderr
    bad = medloop(["scheduler", "status"], {**env, "MEDLOOP_CONFIG": str(tmp_path / "none.toml"),
                                            "MEDLOOP_VLLM_URL": "http://10.0.0.5:8001"})
    assert bad.returncode == 1 and "MEDLOOP_VLLM__URL" in bad.stderr
    old.write_text("[gate]\nmargin = 0.05\n")
    good = medloop(["scheduler", "status"], env)
    assert good.returncode == 0, good.stderr
