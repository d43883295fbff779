"""What a new user meets first: README line 1 (`medloop demo`), every verb of the CLI, and errors instead of
empty results."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medloop.cli import app
from medloop.errors import UserError
from medloop.testing import GUIDELINES, REPO

MEDLOOP = Path(sys.executable).parent / "medloop"  # the console script README line 1 installs


def readme_line(n: int) -> str:
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return block.splitlines()[n - 1]


@pytest.mark.slow
def test_readme_line_one_ends_in_a_demo_whose_answers_cite_their_guidelines(tmp_path):
    command = readme_line(1).split("&&")[-1].split()
    assert command == [".venv/bin/medloop", "demo"]
    # as typed, in a fresh folder: the data home is ./medloop-data, made by this run
    done = subprocess.run([str(MEDLOOP), *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "250", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    cited = re.findall(r"tokens; evidence: (.*)", done.stdout)
    assert len(cited) == 2, done.stdout
    assert "ada-standards-of-care@2025" in cited[0]  # the HbA1c question: the live ADA version
    assert "cn-hypertension@2024" in cited[1] and "cn-hypertension@2018" not in cited[1]  # never the superseded one
    assert "\ufffd" not in done.stdout  # no half character where an answer was cut at max_tokens
    assert (tmp_path / "medloop-data" / "index").is_dir()


def test_demo_fills_an_index_that_a_failed_ingest_left_empty(settings, monkeypatch, tmp_path):
    from medloop.cli.serve import ensure_sample_index
    from medloop.retrieval.segments import indexed_chunks

    bad = tmp_path / "bad.md"
    bad.write_text("---\nid: x\nversion: 1\npublished: not-a-date\n---\n# x\n\ntext\n")
    result = CliRunner().invoke(app, ["ingest", str(bad)])
    assert result.exit_code != 0 and indexed_chunks(settings.index_dir) == 0  # the home was touched, and is empty
    ensure_sample_index(settings)
    assert indexed_chunks(settings.index_dir) > 20


def test_an_ingest_that_finds_no_file_is_an_error_that_names_the_r_flag(settings, tmp_path):
    (tmp_path / "in" / "cardiology").mkdir(parents=True)
    (tmp_path / "in" / "cardiology" / "acs.md").write_text((GUIDELINES / "acc-aha-acs-2025.md").read_text())
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "in")])
    assert isinstance(result.exception, UserError)
    assert "no guideline files" in str(result.exception) and "-r" in str(result.exception)


@pytest.mark.parametrize("argv", [["search", "HbA1c target"], ["eval", "retrieval"], ["eval", "stale"]])
def test_on_an_empty_home_searches_and_evaluations_refuse_and_say_how_to_fill_it(settings, argv):
    result = CliRunner().invoke(app, argv)
    assert isinstance(result.exception, UserError), result.output
    assert "medloop ingest" in str(result.exception)


def test_plain_serve_on_an_empty_index_says_so_in_one_line(settings, monkeypatch):
    import medloop.cli.serve as serve_cli

    monkeypatch.setattr(serve_cli, "build_server", _reach)
    result = CliRunner().invoke(app, ["serve", "--port", "0"])
    assert isinstance(result.exception, Reached)
    warning = [line for line in result.output.splitlines() if "no guidelines indexed" in line]
    assert len(warning) == 1 and "medloop ingest" in warning[0]


# ---- every verb, parsed and routed to its function (in the manner of litgpt's config-hub test) ----

class Reached(Exception):
    """Raised by a verb's heavy function, replaced: the verb parsed its arguments and got this far."""


def _reach(*args, **kwargs):
    raise Reached(args, kwargs)


def _verbs() -> set[str]:
    def walk(command, path):
        subs = getattr(command, "commands", None)
        if subs is None or (getattr(command, "invoke_without_command", False) and path):
            yield " ".join(path)
        for name, sub in (subs or {}).items():
            yield from walk(sub, [*path, name])
    return set(walk(typer.main.get_command(app), []))


def _args(args, kwargs):
    return [*args, *kwargs.values()]


# verb -> (argv, the function it must reach, what it must have been handed)
VERBS = {
    "ingest": (["ingest", "guides", "-r"], "medloop.retrieval.ingest.ingest_and_index",
               lambda a, k: a[1] == [Path("guides")] and k["recursive"] is True),
    "search": (["search", "HbA1c", "-k", "2"], "medloop.retrieval.Retriever", lambda a, k: True),
    "serve": (["serve", "--port", "0", "--no-rag", "--adapter", "med=/a"], "medloop.cli.serve.build_server",
              lambda a, k: k["rag"] is False and k["adapters"] == {"med": "/a"}),
    "demo": (["demo"], "medloop.cli.serve.build_server", lambda a, k: k["engine"] == "local" and k["rag"] is True),
    "index rebuild": (["index", "rebuild"], "medloop.retrieval.load_embedder", lambda a, k: True),
    "index rechunk": (["index", "rechunk"], "medloop.knowledge.KnowledgeStore", lambda a, k: True),
    "index compact": (["index", "compact"], "medloop.retrieval.index.compact_index", lambda a, k: True),
    "index status": (["index", "status"], "medloop.retrieval.segments.read_meta", lambda a, k: True),
    "scheduler start": (["scheduler", "start"], "medloop.continual.scheduler.start", lambda a, k: True),
    "scheduler run": (["scheduler", "run", "ingest"], "medloop.continual.scheduler.run_job",
                      lambda a, k: _args(a, k) == ["ingest"]),
    "scheduler status": (["scheduler", "status"], "medloop.continual.scheduler.status", lambda a, k: True),
    "adapters list": (["adapters", "list"], "medloop.continual.AdapterRegistry", lambda a, k: True),
    "adapters show": (["adapters", "show", "v3"], "medloop.continual.AdapterRegistry", lambda a, k: True),
    "adapters plot": (["adapters", "plot", "x.png"], "medloop.continual.plots.plot_loop",
                      lambda a, k: _args(a, k)[1] == Path("x.png")),
    "adapters promote": (["adapters", "promote", "v3"], "medloop.continual.AdapterRegistry", lambda a, k: True),
    "adapters rollback": (["adapters", "rollback"], "medloop.continual.AdapterRegistry", lambda a, k: True),
    "eval compare": (["eval", "compare", "--target", "other=http://127.0.0.1:9/v1#m"],
                     "medloop.continual.evaluation.compare", lambda a, k: _args(a, k)[0][0].model == "m"),
    "eval retrieval": (["eval", "retrieval", "-k", "2"], "medloop.retrieval.quality.retrieval_quality",
                       lambda a, k: _args(a, k)[2] == 2),
    "eval stale": (["eval", "stale", "--set", "heldout"], "medloop.retrieval.quality.stale_check_quality",
                   lambda a, k: "heldout" in _args(a, k)[1].name),
    "eval mcq": (["eval", "mcq", str(GUIDELINES.parent / "mcq_sample.jsonl"), "--base-model", "b"],
                 "medloop.models.load", lambda a, k: _args(a, k)[0] == "b"),
    "eval loss": (["eval", "loss", "ad", "d.jsonl", "--base-model", "b"], "medloop.training.evaluate.eval_files",
                  lambda a, k: _args(a, k) == ["b", Path("ad"), [Path("d.jsonl")]]),
    "eval run": (["eval", "run", "runs/x"], "medloop.training.components.read_metrics",
                 lambda a, k: _args(a, k) == [Path("runs/x")]),
    "train": (["train", "--base-model", "b", "--data", "d.jsonl", "--output-dir", "o", "--lora-r", "4",
               "--no-quantize"], "medloop.training.train",
              lambda a, k: (a[0].base_model, a[0].lora_r, a[0].quantize) == ("b", 4, False)),
    "train merge": (["train", "merge", "ad", "out"], "medloop.training.merge",
                    lambda a, k: _args(a, k) == [Path("ad"), Path("out")]),
}


def test_every_verb_has_a_row_in_the_smoke_table():
    assert _verbs() == set(VERBS)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_parses_its_arguments_and_reaches_its_function(verb, settings, monkeypatch):
    argv, target, handed = VERBS[verb]
    module, _, name = target.rpartition(".")
    monkeypatch.setattr(f"{module}.{name}", _reach)
    monkeypatch.setattr("medloop.retrieval.segments.indexed_chunks", lambda index_dir: 1)  # as if ingested
    result = CliRunner().invoke(app, argv)
    assert isinstance(result.exception, Reached), (result.output, result.exception)
    args, kwargs = result.exception.args
    assert handed(args, kwargs), (args, kwargs)


# ---- the verbs no other test runs end to end ----

@pytest.mark.slow
def test_knowledge_verbs_end_to_end_rebuild_compact_stale_and_the_scheduler_s_ingest(settings):
    from medloop.retrieval.segments import indexed_chunks

    runner = CliRunner()
    inbox = settings.inbox_dir
    inbox.mkdir(parents=True)
    for f in GUIDELINES.glob("*.md"):
        (inbox / f.name).write_bytes(f.read_bytes())
    os.utime(inbox, None)
    settings_env = {"MEDLOOP_LOOP__INBOX_SETTLE_S": "0"}
    done = runner.invoke(app, ["scheduler", "run", "ingest"], env=settings_env)
    assert done.exit_code == 0, done.output
    assert indexed_chunks(settings.index_dir) > 20 and not list(inbox.glob("*.md"))  # read, then moved out
    assert len(list((settings.processed_dir).rglob("*.md"))) == len(list(GUIDELINES.glob("*.md")))
    rebuilt = runner.invoke(app, ["index", "rebuild"])
    assert rebuilt.exit_code == 0 and re.search(r"index v\d+: \d+ chunks", rebuilt.output), rebuilt.output
    compacted = runner.invoke(app, ["index", "compact"])
    assert compacted.exit_code == 0 and "in one segment" in compacted.output, compacted.output
    stale = runner.invoke(app, ["eval", "stale", "--json", str(settings.home / "stale.json")])
    assert stale.exit_code == 0, stale.output
    figures = json.loads((settings.home / "stale.json").read_text())
    assert figures["stale_answers"] > 0 and figures["detection"] > 0.5


def test_train_merge_end_to_end_folds_the_adapter_into_weights_that_load_alone(tiny_qwen3, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from medloop.models import load
    from medloop.testing import make_adapter

    adapter = make_adapter(tiny_qwen3, tmp_path / "adapter", seed=3)
    merged = CliRunner().invoke(app, ["train", "merge", str(adapter), str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    with_adapter, _ = load(str(tiny_qwen3), adapter)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():  # the merged weights answer as base + adapter did
        assert torch.allclose(model(ids).logits, with_adapter(ids).logits, atol=1e-4)


# ---- the third door on the embedded defaults ----

@pytest.mark.slow
@pytest.mark.timeout(1500)  # 4 to 7 minutes on two cores, more while the suite's vLLM install runs beside it
def test_the_monthly_job_on_the_embedded_defaults_promotes_a_good_month_and_the_server_serves_it(
        settings, monkeypatch, tmp_path):
    """README's defaults (SmolLM2 GGUF base, the auto preset: `small`, QLoRA): ingest, a month of SFT rows in the inbox,
    `medloop scheduler run retrain` as typed, and the running server answers with the promoted adapter. The gate's
    MCQ set is a 16-item slice of the packaged one, the only thing not default: the full set's fact checks on a
    4-bit model take minutes on two cores."""
    import httpx

    from medloop.cli.serve import build_server
    from medloop.config import Settings
    from medloop.continual import AdapterRegistry
    from medloop.serving.live import LiveServer
    from medloop.testing import SABOTAGE

    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text("".join((GUIDELINES.parent / "guideline_mcq.jsonl").read_text().splitlines(True)[::3][:16]))
    monkeypatch.setenv("MEDLOOP_SERVING__ADMIN_KEY", "k-admin")
    monkeypatch.setenv("MEDLOOP_GATE__MCQ", str(mcq))
    assert CliRunner().invoke(app, ["ingest", str(GUIDELINES)]).exit_code == 0
    month = json.loads(SABOTAGE.read_text())["months"]["good1"]  # the sample guidelines' facts, six wordings each
    (settings.inbox_dir / "sft").mkdir(parents=True)
    (settings.inbox_dir / "sft" / "2026-12.jsonl").write_text("".join(json.dumps(r) + "\n" for r in month))
    served = Settings()
    application = build_server(served, engine="local", base_model=served.serving.base_model, adapters={}, rag=True)
    with LiveServer(application) as live:
        done = subprocess.run([str(MEDLOOP), "scheduler", "run", "retrain"], capture_output=True, text=True,
                              timeout=1800, env={**os.environ, "MEDLOOP_LOOP__SERVER_URL": live.url, "COLUMNS": "250"})
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout[re.search(r'^\{\n  "outcome"', done.stdout, re.M).start():])
        assert result["outcome"] == "promoted", result
        assert result["serving"] == "hot-loaded", result
        cards = {m["id"]: m for m in httpx.get(live.url + "/v1/models").json()["data"]}
        assert cards["medical"]["version"] == result["version"] == "v1"
        answer = httpx.post(live.url + "/v1/chat/completions", timeout=300, json={
            "model": "medical", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "What HbA1c target suits most adults with diabetes?"}]})
        assert answer.status_code == 200 and answer.json()["evidence"], answer.text
    record = AdapterRegistry(settings.adapters_dir).get("v1")
    assert Path(record.path, "adapter_config.json").exists()
    assert (settings.home / "models").is_dir()  # the GGUF base, dequantised once, kept in the home
    png = tmp_path / "loop.png"
    plotted = CliRunner().invoke(app, ["adapters", "plot", str(png)])
    assert plotted.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG", plotted.output
