"""Helpers for the tests, benches and examples of a source checkout: a tiny random Qwen3 on the real
Qwen3 tokenizer, random LoRA adapters, and an app served on loopback in a thread.

Every file they read lies in the repository (`tests/fixtures/`, `src/medloop/data/`): a clone stands alone.
"""

from __future__ import annotations

from pathlib import Path

from medloop.serving.live import LiveServer, free_port  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER = FIXTURES / "qwen3-tokenizer"  # the real Qwen3 tokenizer (Apache-2.0, see its SOURCE.md)
SFT = FIXTURES / "sft"  # the same 8 medical Q&A pairs in the three SFT layouts
GUIDELINES = Path(__file__).resolve().parent / "data" / "guidelines"  # shipped with the package


def tiny_qwen3(folder: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A randomly initialised ~10M-parameter Qwen3 on the real Qwen3 tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4, tie_word_embeddings=True,
        max_position_embeddings=4096, eos_token_id=[151645, 151643], pad_token_id=151643, bos_token_id=151643,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights: changes the tiny model's output, no training needed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


def stream_succeeded(status: int, lines: list[str]) -> bool:
    """Did a streamed chat answer succeed? Only with status 200, a finish_reason, no error chunk and a final
    `data: [DONE]`: an error after the stream started arrives as an error chunk and then [DONE] (as in vLLM),
    and counts as a failure."""
    import json

    data = [line[5:].strip() for line in lines if line.startswith("data:")]
    if status != 200 or not data or data[-1] != "[DONE]":
        return False
    finished = False
    for item in data[:-1]:
        payload = json.loads(item)
        if "error" in payload:
            return False
        finished = finished or any(c.get("finish_reason") for c in payload.get("choices") or [])
    return finished
