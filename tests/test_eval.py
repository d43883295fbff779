"""Evaluation reports: side-by-side comparison, retrieval quality, MCQ, loss and run curves."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medloop.cli import app
from medloop.continual import evaluation
from medloop.continual.mcq import load_mcq, mcq_accuracy, option_logprobs
from medloop.serving import build_app
from medloop.serving.local_engine import LocalEngine
from medloop.testing import SFT, LiveServer, ScriptedEngine, make_adapter, sample_index

DATA = Path(evaluation.__file__).resolve().parents[1] / "data"


@pytest.mark.slow
def test_compare_writes_markdown_and_html_with_every_target(settings, tiny_qwen3, embedder, tmp_path):
    sample_index(settings, embedder)
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


@pytest.mark.slow
def test_mcq_scores_every_option_and_picks_the_likeliest(tiny_qwen3, settings, embedder):
    from medloop.models import load

    retriever = sample_index(settings, embedder)
    model, tokenizer = load(str(tiny_qwen3))
    result = mcq_accuracy(model, tokenizer, load_mcq(DATA / "mcq_sample.jsonl"), retriever)
    for mode in ("no_evidence", "evidence"):
        details = result[mode]["details"]
        assert len(details) == 4 and all(set(d["scores"]) == {"A", "B", "C", "D"} for d in details)
        assert all(d["chosen"] == max(d["scores"], key=d["scores"].get) for d in details)
        assert result[mode]["accuracy"] == sum(d["chosen"] == d["answer"] for d in details) / 4
    # evidence in the prompt changes the scores
    assert result["evidence"]["details"][0]["scores"] != result["no_evidence"]["details"][0]["scores"]


@pytest.mark.slow
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


def test_mcq_reads_real_benchmark_layouts(tmp_path):
    drugs = {"A": "Insulin", "B": "Metformin", "C": "Aspirin", "D": "Statin"}
    medqa = {"question": "Q1", "answer": "Metformin", "options": drugs, "meta_info": "step1", "answer_idx": "B"}
    medqa_text_only = {"question": "Q2", "answer": "aspirin", "options": drugs}
    lower = {"question": "Q3", "options": ["x", "y", "z"], "answer": "c"}
    files = {
        "medqa.jsonl": [medqa, medqa_text_only, lower],
        "medmcqa.jsonl": [{"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 4},
                          {"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1}],
        "medmcqa_hf.jsonl": [{"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0},
                             {"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 3}],
    }
    for name, rows in files.items():
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "cmmlu.csv").write_text(",Question,A,B,C,D,Answer\n0,高血压目标?,<150,<140,<130,<120,C\n")
    assert [i.answer for i in load_mcq(tmp_path / "medqa.jsonl")] == ["B", "C", "C"]
    assert [i.answer for i in load_mcq(tmp_path / "medmcqa.jsonl")] == ["D", "A"]
    assert [i.answer for i in load_mcq(tmp_path / "medmcqa_hf.jsonl")] == ["A", "D"]
    item = load_mcq(tmp_path / "cmmlu.csv")[0]
    assert (item.question, item.options["C"], item.answer, item.line) == ("高血压目标?", "<130", "C", 2)


def test_a_medmcqa_file_that_cannot_show_its_cop_base_is_refused_unless_named(tmp_path):
    """A 0-based subset that never answers A looks 1-based: read that way, every answer moves one letter."""
    row = {"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}
    ambiguous = tmp_path / "medmcqa_sub.jsonl"
    ambiguous.write_text("\n".join(json.dumps({**row, "cop": c}) for c in (1, 3, 2)) + "\n")
    with pytest.raises(ValueError, match=r"medmcqa_sub.jsonl: every `cop` .* --cop-base"):
        load_mcq(ambiguous)
    assert [i.answer for i in load_mcq(ambiguous, cop_base=0)] == ["B", "D", "C"]
    assert [i.answer for i in load_mcq(ambiguous, cop_base=1)] == ["A", "C", "B"]
    result = CliRunner().invoke(app, ["eval", "mcq", str(ambiguous), "--no-evidence"])
    assert result.exit_code == 2 and "medmcqa_sub.jsonl" in result.output and "--cop-base" in result.output
    both = tmp_path / "both.jsonl"
    both.write_text("\n".join(json.dumps({**row, "cop": c}) for c in (0, 4)) + "\n")
    with pytest.raises(ValueError, match="line 1 .* line 2"):
        load_mcq(both)


def test_mcq_answer_outside_the_options_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [{"question": "Q", "options": {"A": "x", "B": "y"}, "answer": "A"},
            {"question": "Q", "options": {"A": "x", "B": "y"}, "answer": "Penicillin"}]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: answer 'Penicillin' is not one of the options A, B"):
        load_mcq(bad)
    result = CliRunner().invoke(app, ["eval", "mcq", str(bad), "--no-evidence"])
    assert result.exit_code == 2 and "bad.jsonl:2" in result.output


@pytest.mark.slow
def test_shared_prompt_scores_equal_full_forward_scores(tiny_qwen3):
    import torch

    from medloop.models import load

    model, tokenizer = load(str(tiny_qwen3))
    prompt = tokenizer("<|im_start|>user\n高血压的降压目标？<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    options = [tokenizer(t)["input_ids"] for t in ["A. <130/80 mmHg", "B. <140/90", "C. 降至正常", "D. x"]]
    fast = option_logprobs(model, prompt, options)
    for option, score in zip(options, fast, strict=True):
        with torch.inference_mode():
            logp = model(torch.tensor([prompt + option])).logits[0, len(prompt) - 1: -1].log_softmax(-1)
        reference = float(logp.gather(1, torch.tensor(option)[:, None]).sum()) / len(option)
        assert abs(score - reference) < 1e-4


@pytest.mark.slow
def test_mcq_runs_on_the_embedded_default_model(settings):
    result = CliRunner().invoke(app, ["eval", "mcq", str(DATA / "mcq_sample.jsonl"), "--no-evidence"])
    assert result.exit_code == 0, result.output
    assert "no_evidence  accuracy" in result.output and "on 4 questions" in result.output


class SlowFirstEngine(ScriptedEngine):
    """Answers "ok" instantly, except the very first request, which pays a 'model load' of 1.5 s."""

    def __init__(self):
        super().__init__("ok", name="slow-first")
        self.calls = 0

    async def stream(self, request):
        import asyncio

        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(1.5)
        async for delta in super().stream(request):
            yield delta


def test_compare_times_each_target_after_a_warm_up(settings):
    engine = SlowFirstEngine()
    with LiveServer(build_app(settings, engine, None)) as server:
        target = evaluation.Target("slow", "slow-first", url=server.url + "/v1")
        [result] = evaluation.compare([target], ["q1", "q2"], local_url=None, max_tokens=4)
    assert engine.calls == 3 and result.errors == []
    assert max(result.seconds) < 1.0  # the load went into the untimed warm-up
