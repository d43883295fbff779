"""Tiny models for tests and benches: a random Qwen3 on the real tokenizer (any public shape), a word-level one,
random LoRA adapters, SmolLM2 as a trainable folder, a registry with candidates."""

from __future__ import annotations

from pathlib import Path

from medloop.testing.paths import TOKENIZER


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


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_word_qwen3(folder: Path, texts: list[str], *, hidden_size: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """A random Qwen3 on a word-level vocabulary of `texts` (ChatML template, untied embeddings).

    The 151k-token Qwen3 vocabulary makes a tiny model's every step an output layer of 151k rows: on two cores
    it learns which tokens are frequent, not which answer goes with which question. With a few hundred words
    the same architecture trains in milliseconds a step and learns question -> answer mappings through LoRA
    plus trained embeddings, so the promotion gate can be tested on a model that knows things."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
    words = sorted({w for t in texts for w in t.split()} - set(special))
    vocab = {w: i for i, w in enumerate(special + ["user", "assistant", "system"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    end = vocab["<|im_end|>"]
    config = Qwen3Config(vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=hidden_size // 4, tie_word_embeddings=False, max_position_embeddings=2048,
                         eos_token_id=end, pad_token_id=0, bos_token_id=0)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = end, 0
    model.save_pretrained(folder)
    return Path(folder)


def make_adapter(base: Path, out: Path, seed: int, *, rank: int = 8, targets: str | list[str] = "some") -> Path:
    """A LoRA adapter with random (non-zero) weights: changes the model's output, no training needed. `targets`:
    q, v and down projections ("some"), every projection ("all"), or a list."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medloop.training.config import ALL_PROJECTIONS

    modules = {"some": ["q_proj", "v_proj", "down_proj"], "all": ALL_PROJECTIONS}.get(targets, targets) \
        if isinstance(targets, str) else targets
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=8 * rank, target_modules=modules,
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


def smollm2_folder(out: Path) -> Path:
    """The embedded GGUF (SmolLM2-135M-Instruct), dequantised and saved as a trainable transformers folder."""
    from medloop.models import DEFAULT_CHAT_MODEL, dequantise

    return dequantise(DEFAULT_CHAT_MODEL, out)


QWEN3_SHAPES = {  # from the public Qwen3 config.json files; "tiny" for CPU dry runs
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
}


def qwen3_shaped(folder: Path, shape: str) -> Path:
    """A Qwen3 of a real size with random weights (bfloat16; built on the GPU when there is one) on the real
    tokenizer: speed and memory depend on shapes and lengths, not on weight values."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    config = Qwen3Config(vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
                         eos_token_id=[151645, 151643], pad_token_id=151643, bos_token_id=151643, **QWEN3_SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = [151645, 151643], 151643
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def registry_with_candidates(adapters_dir: Path, base: Path, seeds=(1, 2)):
    """An adapter registry holding one finished candidate version (random LoRA weights) per seed."""
    from medloop.continual import AdapterRegistry

    registry = AdapterRegistry(adapters_dir)
    for seed in seeds:
        record = registry.new_version(None, {})
        make_adapter(base, adapters_dir / record.version, seed)
        record.status, record.pid = "candidate", None
        registry.save(record)
    return registry
