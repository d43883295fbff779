"""Evaluation reports: side-by-side comparison, retrieval quality, MCQ, loss and run curves."""

import json
from pathlib import Path

from typer.testing import CliRunner

from conftest import GUIDELINES, SFT, LiveServer, make_adapter
from medloop.cli import app
from medloop.continual import evaluation
from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.retrieval import Retriever, sync_index
from medloop.serving import build_app
from medloop.serving.local_engine import LocalEngine

DATA = Path(evaluation.__file__).resolve().parents[1] / "data"


def test_compare_writes_markdown_and_html_with_every_target(settings, tiny_qwen3, embedder, tmp_path):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    adapter = make_adapter(tiny_qwen3, settings.adapters_dir / "med", seed=3)
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question": q}, ensure_ascii=False)
                                   for q in ["高血压患者的降压目标是多少？", "What is the A1C goal for adults?"]))
    external = LiveServer(build_app(settings, LocalEngine(str(tiny_qwen3), served_name="ext"), None)).__enter__()
    try:
        result = CliRunner().invoke(app, [
            "eval", "compare", "--base-model", str(tiny_qwen3), "--adapter", f"med={adapter}",
            "--target", "base", "--target", "med", "--target", "med+rag", "--target", f"other={external.url}/v1#ext",
            "--questions", str(questions), "--max-tokens", "8", "--out", str(tmp_path / "report"),
        ])
    finally:
        external.__exit__(None, None, None)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text()
    for name in ("base", "med", "med+rag", "other"):
        assert f"<td>{name}</td>" in page and f"<th>{name}</th>" in page
    assert page.count('src="data:image/png;base64,') == 3  # self-contained charts
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| med+rag |" in md and "高血压患者的降压目标是多少？" in md
    assert "最新临床依据" in md  # the +rag target answered with evidence, the others without
    assert md.count("最新临床依据") == 1
    assert (tmp_path / "report" / "tokens_per_s.png").stat().st_size > 1000


def test_default_questions_are_the_reports_ten():
    qs = evaluation.load_questions(evaluation.DEFAULT_QUESTIONS)
    assert len(qs) == 10 and qs[0].startswith("糖尿病的主要症状") and qs[-1].startswith("新冠康复后")


def test_retrieval_quality_on_labelled_questions(settings, embedder):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    result = evaluation.retrieval_quality(Retriever(settings, store=store, embedder=embedder),
                                          DATA / "retrieval_eval.jsonl", k=3)
    assert result["questions"] == 8
    assert result["recall_at_k"] == 1.0 and result["mrr"] > 0.8
    assert result["newest_version_share"] == 1.0


def test_retrieval_quality_notices_an_outdated_index(settings, embedder):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-hypertension-2018.md"])
    sync_index(settings, store, embedder=embedder)
    labelled = DATA / "retrieval_eval.jsonl"
    one = settings.home / "one.jsonl"
    one.write_text(labelled.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    result = evaluation.retrieval_quality(Retriever(settings, store=store, embedder=embedder), one, k=3)
    assert result["recall_at_k"] == 1.0 and result["newest_version_share"] == 0.0  # found, but the 2018 text


def test_mcq_scores_every_option_and_picks_the_likeliest(tiny_qwen3, settings, embedder):
    from medloop.training.evaluate import load_for_eval

    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES])
    sync_index(settings, store, embedder=embedder)
    model, tokenizer = load_for_eval(str(tiny_qwen3))
    result = evaluation.mcq_accuracy(model, tokenizer, DATA / "mcq_sample.jsonl",
                                     Retriever(settings, store=store, embedder=embedder))
    for mode in ("no_evidence", "evidence"):
        details = result[mode]["details"]
        assert len(details) == 4 and all(set(d["scores"]) == {"A", "B", "C", "D"} for d in details)
        assert all(d["chosen"] == max(d["scores"], key=d["scores"].get) for d in details)
        assert result[mode]["accuracy"] == sum(d["chosen"] == d["answer"] for d in details) / 4
    # evidence in the prompt changes the scores
    assert result["evidence"]["details"][0]["scores"] != result["no_evidence"]["details"][0]["scores"]


def test_eval_loss_and_run_curves_from_the_cli(tiny_qwen3, tmp_path):
    from medloop.training import make_config, train

    out = tmp_path / "adapter"
    train(make_config("low-mem", base_model=str(tiny_qwen3), data=[SFT / "alpaca_zh_en.jsonl"], output_dir=out,
                      max_steps=2, val_size=2, swanlab_mode="disabled", quantize=False, logging_steps=1))
    runner = CliRunner()
    loss = runner.invoke(app, ["eval", "loss", str(out), str(SFT / "sharegpt_zh_en.jsonl")])
    assert loss.exit_code == 0 and "perplexity" in loss.output and "8 samples" in loss.output
    (out / "loss.png").unlink()
    run = runner.invoke(app, ["eval", "run", str(out)])
    assert run.exit_code == 0 and (out / "loss.png").stat().st_size > 1000
    assert runner.invoke(app, ["eval", "run", str(tmp_path)]).exit_code == 2
