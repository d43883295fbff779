"""The QLoRA recipe on a tiny random Qwen3 with the real tokenizer: data, labels, training, resume, adapters."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from medloop.cli import app
from medloop.testing import SFT, TOKENIZER
from medloop.training import make_config, merge, train
from medloop.training.components import AdaptiveClip, TermMaskingCollator
from medloop.training.config import PRESETS_DIR, load_preset
from medloop.training.data import IGNORE, BadSample, load_samples, render

LAYOUTS = ["sharegpt_zh_en.jsonl", "alpaca_zh_en.jsonl", "messages_think_zh_en.jsonl"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_all_three_layouts_read_the_same_conversations():
    convs = {name: load_samples([SFT / name])[0] for name in LAYOUTS}
    assert all(len(c) == 8 for c in convs.values())
    first_user = {name: c[0][-2]["content"] for name, c in convs.items()}
    assert len(set(first_user.values())) == 1


def test_labels_are_exactly_the_assistant_turns(tokenizer):
    messages = [
        {"role": "system", "content": "你是医学助手。"},
        {"role": "user", "content": "什么是高血压？"},
        {"role": "assistant", "content": "血压持续升高。"},
        {"role": "user", "content": "目标是多少？"},
        {"role": "assistant", "content": "<think>\n看指南\n</think>\n\n一般<130/80 mmHg。"},
    ]
    row = render(tokenizer, messages, max_length=4096)
    trained = [(i, t) for i, (t, lab) in enumerate(zip(row["input_ids"], row["labels"], strict=True)) if lab != IGNORE]
    assert all(row["labels"][i] == t for i, t in trained)
    text = tokenizer.decode([t for _, t in trained])
    assert text == "血压持续升高。<|im_end|><think>\n看指南\n</think>\n\n一般<130/80 mmHg。<|im_end|>"
    untrained = tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab == IGNORE])
    assert "什么是高血压" in untrained and "<|im_start|>assistant" in untrained and "血压持续升高" not in untrained


def test_sample_without_reasoning_trains_non_thinking_form(tokenizer):
    row = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                 max_length=512)
    trained = tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE])
    assert trained == "<think>\n\n</think>\n\nhello<|im_end|>"


def test_bad_lines_are_reported_with_line_numbers_and_skipped(tmp_path):
    f = tmp_path / "mixed.jsonl"
    good = (SFT / "alpaca_zh_en.jsonl").read_text().splitlines()[0]
    f.write_text("\n".join([good, "{not json", '{"foo": 1}', '{"conversations": [{"from": "human", "value": "q"}]}',
                            '{"messages": [{"role": "alien", "content": "x"}]}', good]) + "\n")
    samples, report = load_samples([f])
    assert len(samples) == 2
    assert [line for _, line, _ in report.dropped] == [2, 3, 4, 5]
    reasons = " ".join(r for _, _, r in report.dropped)
    assert "invalid JSON" in reasons and "unknown layout" in reasons and "no assistant" in reasons
    with pytest.raises(BadSample, match="mixed.jsonl:2"):
        load_samples([f], strict=True)


def test_presets_are_data_and_flags_override():
    v3 = make_config("v3", base_model="m", data=[], output_dir="o")
    assert (v3.lr_scheduler, v3.warmup_ratio, v3.modules_to_save, v3.adaptive_clip) == ("cosine", 0.1, ["embed_tokens"],
                                                                                       True)
    assert 0.10 <= v3.term_masking <= 0.15
    low = make_config("low-mem", base_model="m", data=[], output_dir="o", lora_r=4)
    assert (low.lora_r, low.use_rslora, low.max_length, low.target_modules) == (4, True, 384,
                                                                               ["q_proj", "v_proj", "gate_proj",
                                                                                "down_proj"])
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("v9", base_model="m", data=[], output_dir="o")


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.toml")))
def test_every_preset_trains_a_step_as_written(tiny_qwen3, tmp_path, preset):
    """Each preset file, with nothing overridden but the step count, loads, trains (QLoRA) and records itself."""
    result = CliRunner().invoke(app, [
        "train", "--base-model", str(tiny_qwen3), "--data", str(SFT / LAYOUTS[0]), "--output-dir", str(tmp_path),
        "--preset", preset, "--max-steps", "1", "--val-size", "0", "--swanlab-mode", "disabled"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "medloop_run.json").read_text())
    assert run["preset"] == preset and run["steps"] == 1
    assert {k: run["config"][k] for k in load_preset(preset)} == load_preset(preset)


def test_term_masking_masks_prompt_terms_only(tokenizer):
    messages = [{"role": "user", "content": "高血压和糖尿病怎么办？"},
                {"role": "assistant", "content": "高血压要控制。"}]
    row = render(tokenizer, messages, max_length=512, terms=["高血压", "糖尿病"])
    assert len({t for t in row["term_ids"] if t}) == 2  # two occurrences in the prompt, none in the answer
    always = TermMaskingCollator(tokenizer.pad_token_id, 151662, probability=1.0)
    batch = always([row])
    masked = [i for i, t in enumerate(row["term_ids"]) if t]
    assert all(batch["input_ids"][0, i] == 151662 for i in masked)
    assert batch["labels"][0].tolist() == row["labels"]
    never = TermMaskingCollator(tokenizer.pad_token_id, 151662, probability=0.0)
    assert never([row])["input_ids"][0].tolist() == row["input_ids"]


def test_adaptive_clip_follows_recent_norms():
    clip = AdaptiveClip(percentile=50, window=20, warmup=5)
    assert clip.threshold(0.3) == 0.3  # fixed until warmed up
    for n in [1.0, 2.0, 3.0, 4.0, 5.0]:
        clip.update(n)
    assert clip.threshold(0.3) == 3.0
    for _ in range(20):
        clip.update(10.0)
    assert clip.threshold(0.3) == 10.0  # the window forgot the old norms
    clip.update(float("nan"))
    assert clip.threshold(0.3) == 10.0


def test_micro_batch_fills_the_memory_budget_and_keeps_the_effective_batch():
    from medloop.training.recipe import choose_micro_batch

    tried = []

    def peak(micro):  # 3 GB of weights, 0.6 GB a sample; 16 samples run out of memory
        tried.append(micro)
        return float("inf") if micro >= 16 else (3 + 0.6 * micro) * 2**30

    assert choose_micro_batch(8, 8 * 2**30, peak) == 8 and tried == [8]  # 7.8 GB fits
    tried.clear()
    assert choose_micro_batch(8, 5 * 2**30, peak) == 2 and tried == [8, 4, 2]  # only divisors of 8
    assert choose_micro_batch(12, 7 * 2**30, peak) == 6  # 6 x 2 = 12
    assert choose_micro_batch(32, 100 * 2**30, peak) == 8  # 16 and 32 ran out of memory
    assert choose_micro_batch(8, 2**30, peak) == 1  # nothing fits: the smallest step, and training says so


def test_without_a_gpu_the_configured_split_stays(tmp_path):
    from medloop.training.recipe import fit_micro_batch

    config = make_config("v1", base_model="m", data=[tmp_path / "d.jsonl"], output_dir=tmp_path / "out")
    said = []
    assert config.memory_budget_gb == 8 and make_config("low-mem", base_model="m", data=[], output_dir=tmp_path)\
        .memory_budget_gb == 4
    kept = fit_micro_batch(config, None, None, [{"input_ids": [1], "labels": [1]}], said.append)
    assert (kept.batch_size, kept.grad_accum) == (4, 2) and said == [
        "batch: micro-batch 4 x accumulation 2 (as configured)"]


def _config(tiny_qwen3, tmp_path, preset="v1", **kw):
    base = dict(base_model=str(tiny_qwen3), data=[SFT / n for n in LAYOUTS], output_dir=tmp_path / "adapter",
                max_steps=24, learning_rate=5e-3, batch_size=4, grad_accum=1, lora_r=16, lora_alpha=32,
                logging_steps=4, eval_steps=12, save_steps=12, val_size=4, max_length=256)
    return make_config(preset, **{**base, **kw})


@pytest.mark.slow
def test_qlora_lowers_training_loss_and_writes_a_loadable_adapter(tiny_qwen3, tmp_path):
    result = train(_config(tiny_qwen3, tmp_path))
    out = result.output_dir
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r and "eval_perplexity" in r for r in records)
    assert [r["step"] for r in records if "eval_loss" in r] == [12, 24]  # the last step is evaluated once
    assert any("tokens_per_s" in r and "peak_memory_mb" in r and "learning_rate" in r and "grad_norm" in r
               for r in records)
    run = json.loads((out / "medloop_run.json").read_text())
    assert run["config"]["quantize"] and run["config"]["optim"] == "" and run["steps"] == 24
    assert set(run["versions"]) >= {"torch", "transformers", "peft", "bitsandbytes"}
    assert all(len(h) == 64 for h in run["data"].values())
    assert (out / "loss.png").stat().st_size > 1000 and list((out / "swanlab").iterdir())
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer_config.json").exists()

    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    ids = torch.tensor([[151644, 872, 198, 100, 151645]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out)(ids).logits
    assert not torch.allclose(before, tuned)

    merged = merge(out, tmp_path / "merged")
    merged_logits = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert torch.allclose(merged_logits, tuned, atol=1e-3)


@pytest.mark.slow
def test_v3_recipe_trains_with_masking_and_adaptive_clip(tiny_qwen3, tmp_path):
    result = train(_config(tiny_qwen3, tmp_path, preset="v3", max_steps=14, save_steps=100, warmup_ratio=0.0,
                           modules_to_save=[], quantize=False))
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    thresholds = [r["clip_threshold"] for r in records if "clip_threshold" in r]
    assert thresholds[0] == 0.3 and thresholds[-1] != 0.3  # fixed during warm-up, then the running percentile


@pytest.mark.slow
def test_resume_continues_the_step_count(tiny_qwen3, tmp_path):
    train(_config(tiny_qwen3, tmp_path, max_steps=4, save_steps=2, eval_steps=100, logging_steps=1, quantize=False))
    resumed = train(_config(tiny_qwen3, tmp_path, max_steps=6, save_steps=2, eval_steps=100, logging_steps=1,
                            quantize=False, resume=True))
    assert resumed.steps == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "adapter" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps[:4] == [1, 2, 3, 4] and steps[4:] == [5, 6]  # the second run started at step 5


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_trains_from_the_cli(tiny_qwen3, tmp_path, layout):
    result = CliRunner().invoke(app, [
        "train", "--base-model", str(tiny_qwen3), "--data", str(SFT / layout), "--output-dir", str(tmp_path / "a"),
        "--preset", "low-mem", "--max-steps", "2", "--val-size", "2", "--no-quantize", "--swanlab-mode", "disabled",
    ])
    assert result.exit_code == 0, result.output
    assert "adapter:" in result.output and (tmp_path / "a" / "adapter_config.json").exists()


@pytest.mark.slow
def test_cli_train_strict_fails_on_bad_line(tiny_qwen3, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text((SFT / "alpaca_zh_en.jsonl").read_text() + "{broken\n")
    result = CliRunner().invoke(app, ["train", "--base-model", str(tiny_qwen3), "--data", str(bad), "--output-dir",
                                      str(tmp_path / "a"), "--strict", "--swanlab-mode", "disabled"])
    assert result.exit_code == 2 and "bad.jsonl:9" in result.output


@pytest.mark.slow
def test_every_config_field_is_a_flag_validated_by_the_config(tiny_qwen3, tmp_path):
    import typer

    from medloop.training import TrainConfig

    train_group = typer.main.get_command(app).commands["train"]
    flags = {opt for param in train_group.params for opt in param.opts + param.secondary_opts}
    for name in TrainConfig.model_fields:
        assert "--" + name.replace("_", "-") in flags, name
    out = tmp_path / "a"
    result = CliRunner().invoke(app, [
        "train", "--base-model", str(tiny_qwen3), "--data", str(SFT / "alpaca_zh_en.jsonl"), "--output-dir", str(out),
        "--preset", "v1", "--no-quantize", "--swanlab-mode", "disabled", "--max-steps", "2", "--val-size", "0",
        "--lora-r", "4", "--lora-dropout", "0.05", "--target-modules", "q_proj", "--target-modules", "v_proj",
        "--warmup-ratio", "0.1", "--term-masking", "0.2", "--adaptive-clip", "--no-gradient-checkpointing",
    ])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "medloop_run.json").read_text())["config"]
    assert (config["lora_r"], config["lora_dropout"], config["target_modules"]) == (4, 0.05, ["q_proj", "v_proj"])
    assert (config["warmup_ratio"], config["term_masking"], config["adaptive_clip"]) == (0.1, 0.2, True)
    assert config["gradient_checkpointing"] is False and config["max_grad_norm"] == 0.3  # the preset's value stands
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"} and adapter["r"] == 4
    bad = CliRunner().invoke(app, ["train", "--base-model", "x", "--data", "x.jsonl", "--output-dir", str(out),
                                   "--lora-dropout", "2"])
    assert bad.exit_code == 2 and "--lora-dropout" in bad.output


@pytest.mark.slow
def test_torchrun_trains_one_adapter_on_two_processes(tiny_qwen3, tmp_path):
    """DDP for real, on CPU (gloo): each process trains on its own half of the data, the first alone writes the
    adapter and the metrics, and the loss falls."""
    import os
    import subprocess
    import sys

    out = tmp_path / "adapter"
    data = tmp_path / "sixteen.jsonl"  # 16 samples: 8 steps of 2 on one process, 4 on each of two
    data.write_text((SFT / "alpaca_zh_en.jsonl").read_text() + (SFT / "sharegpt_zh_en.jsonl").read_text())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "medloop.cli", "train", "--base-model", str(tiny_qwen3), "--data", str(data), "--output-dir",
           str(out), "--preset", "low-mem", "--no-quantize", "--batch-size", "2", "--grad-accum", "1", "--epochs",
           "1", "--val-size", "0", "--learning-rate", "0.005", "--logging-steps", "1", "--swanlab-mode", "disabled",
           "--no-gradient-checkpointing"]
    run = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "medloop_run.json").read_text())
    assert record["processes"] == 2 and record["steps"] == 4  # each process took its own half
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4]  # written once, by the first process
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0]
    assert (out / "adapter_model.safetensors").exists()


def test_eval_loss_is_the_same_batched_or_one_at_a_time(tiny_qwen3):
    """Rows of different lengths share a batch left-padded (models.left_pad), each counting positions from its
    first token: padding changes no row's loss."""
    from medloop.models import load
    from medloop.training.evaluate import eval_loss

    model, tokenizer = load(str(tiny_qwen3))
    samples = [s for name in LAYOUTS for s in load_samples([SFT / name])[0]]
    batched = eval_loss(model, tokenizer, samples, batch_size=8)
    alone = eval_loss(model, tokenizer, samples, batch_size=1)
    assert batched["tokens"] == alone["tokens"] > 0
    assert abs(batched["loss"] - alone["loss"]) < 1e-4, (batched, alone)


def test_the_auto_preset_teaches_a_small_model_hard_and_a_large_one_gently(tiny_qwen3, tmp_path):
    """The monthly job's default: `small` (lr 1e-3) below a billion parameters, `low-mem` (QLoRA, lr 1e-4) above;
    on SmolLM2 low-mem's twelve steps put none of a month's answers in the model's own. Counted from the config
    alone: a Qwen3-8B-sized config is read without weights."""
    from transformers import Qwen3Config

    from medloop.models import parameter_count

    assert make_config("auto", base_model=str(tiny_qwen3), data=["d.jsonl"], output_dir="o").preset == "small"
    big = tmp_path / "qwen3-8b"
    Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128).save_pretrained(big)
    assert 8e9 < parameter_count(str(big)) < 9e9
    config = make_config("auto", base_model=str(big), data=["d.jsonl"], output_dir="o")
    assert config.preset == "low-mem" and config.quantize and config.learning_rate == 1e-4
    assert make_config("small", base_model="m", data=["d.jsonl"], output_dir="o").learning_rate == 1e-3
