"""What an adapter folder must be before it touches the live model.

Checked from the folder's metadata alone, before anything is allocated or unpickled: the config parses and is a
LoRA within the server's rank limit; its target modules exist in the base model; the weights are safetensors
(a pickled `.bin` is never loaded) whose header names only LoRA tensors of those modules, with the shapes the
base model and the rank imply, and whose size is what those tensors need; no file leads outside the folder.
Refusals name the problem (never the file's contents): 404 when there is no adapter, 413 for a file larger
than its tensors need, 400 otherwise.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from medloop.serving.errors import EngineError, EngineFailure

CONFIG, WEIGHTS, PICKLED = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
MAX_PATH_CHARS = 4096


class AdapterRefused(EngineError):
    pass


def _refuse(message: str, kind: EngineFailure = "invalid") -> AdapterRefused:
    return AdapterRefused(kind, message, param="path")


def checked_path(path: str, allowed: list[Path]) -> Path:
    """The adapter folder `path` names, resolved (symlinks followed), inside one of the `allowed` roots."""
    if "\0" in path:
        raise _refuse("the adapter path contains a NUL character")
    if len(path) > MAX_PATH_CHARS:
        raise _refuse(f"the adapter path is longer than {MAX_PATH_CHARS} characters")
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise _refuse(f"the adapter path cannot be resolved ({type(e).__name__})") from e
    roots = [a.resolve() for a in allowed]
    if not any(resolved == a or resolved.is_relative_to(a) for a in roots):
        raise _refuse("adapter path must be inside the adapter registry (or a folder configured at start)")
    return resolved


def _inside(folder: Path, name: str) -> Path | None:
    """The file `name` of the folder, if it exists and does not lead out of the folder (a symlink to /etc/...)."""
    path = folder / name
    if not path.exists() and not path.is_symlink():
        return None
    if not path.resolve().is_relative_to(folder.resolve()) or not path.resolve().is_file():
        raise _refuse(f"{name} leads outside the adapter folder or is not a regular file")
    return path


def check_adapter(folder: Path, model, max_rank: int):
    """The adapter's `LoraConfig`, once the folder passed every check against `model` (the live model, with or
    without adapters loaded); an `AdapterRefused` otherwise."""
    from peft import LoraConfig

    config_path = _inside(folder, CONFIG)
    if config_path is None:
        raise _refuse(f"No adapter found for {folder}", kind="not_found")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise _refuse(f"{CONFIG} is larger than {MAX_CONFIG_BYTES} bytes", kind="too_large")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise _refuse(f"{CONFIG} is not valid JSON ({type(e).__name__})") from e
    if not isinstance(raw, dict) or raw.get("peft_type", "LORA") != "LORA":
        raise _refuse(f"{CONFIG} does not describe a LoRA adapter (peft_type LORA)")
    ranks = [raw.get("r", 8), *(raw.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks):
        raise _refuse(f"{CONFIG}: the rank 'r' must be a positive integer")
    if max(ranks) > max_rank:
        raise _refuse(f"LoRA rank {max(ranks)} is greater than this server's max_lora_rank {max_rank}")
    known = {f for f in LoraConfig.__dataclass_fields__}
    try:
        config = LoraConfig(**{k: v for k, v in raw.items() if k in known and k not in {"peft_type"}})
    except (TypeError, ValueError) as e:
        raise _refuse(f"{CONFIG} is not a valid LoRA config: {str(e)[:200]}") from e

    modules = _base_modules(model)
    targets = config.target_modules
    if isinstance(targets, str):
        import re

        matched = [n for n in modules if re.fullmatch(targets, n)]
        if not matched:
            raise _refuse(f"no module of the base model matches target_modules '{targets[:100]}'")
    else:
        missing = sorted(t for t in targets or [] if not any(n == t or n.endswith("." + t) for n in modules))
        if missing or not targets:
            raise _refuse(f"target modules not in the base model: {', '.join(missing[:10]) or 'none given'}")
    _check_weights(folder, modules, max_rank)
    return config


def _base_modules(model) -> dict:
    """The base model's modules by name (as peft writes tensor names), LoRA wrappers seen through."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {}
    for name, module in base.named_modules():
        if ".lora_" in name or name.endswith(".base_layer") or ".base_layer." in name:
            continue
        out[name] = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return out


def _dims(module) -> tuple[int, int] | None:
    """(in, out) of a linear or (rows, width) of an embedding."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    if hasattr(module, "num_embeddings"):
        return module.num_embeddings, module.embedding_dim
    return None


def _check_weights(folder: Path, modules: dict, max_rank: int) -> None:
    weights = _inside(folder, WEIGHTS)
    if weights is None:
        if _inside(folder, PICKLED) is not None:
            raise _refuse(f"the weights must be safetensors ({WEIGHTS}); a pickled {PICKLED} is never loaded")
        raise _refuse(f"no weights ({WEIGHTS}) in the adapter folder")
    size = weights.stat().st_size
    with open(weights, "rb") as f:
        head = f.read(8)
        (length,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise _refuse(f"{WEIGHTS} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as e:
            raise _refuse(f"{WEIGHTS} is not a safetensors file (unreadable header)") from e
    if not isinstance(header, dict):
        raise _refuse(f"{WEIGHTS} is not a safetensors file (header is not a mapping)")
    header.pop("__metadata__", None)
    if not header:
        raise _refuse(f"{WEIGHTS} holds no tensors")
    needed = 0
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise _refuse(f"{WEIGHTS}: tensor '{name[:100]}' has no dtype, shape or offsets") from e
        if dtype not in DTYPE_BYTES or any(d < 0 for d in shape):
            raise _refuse(f"{WEIGHTS}: tensor '{name[:100]}' has an unsupported dtype or shape")
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if end - start != nbytes:
            raise _refuse(f"{WEIGHTS}: tensor '{name[:100]}' offsets do not match its shape")
        _check_tensor(name, shape, modules, max_rank)
        needed += nbytes
    if size != 8 + length + needed:
        raise _refuse(f"{WEIGHTS} is {size} bytes; its tensors need {8 + length + needed}",
                      kind="too_large" if size > 8 + length + needed else "invalid")


LORA_PARTS = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_embedding_A": "EA", ".lora_embedding_B": "EB"}


def _check_tensor(name: str, shape: list[int], modules: dict, max_rank: int) -> None:
    """A LoRA tensor of a base module, shaped as that module and a rank within the limit imply (or a module
    trained in full, `modules_to_save`, shaped as the module's own weight)."""
    path = name.removeprefix("base_model.model.")
    part = next((p for p in LORA_PARTS if path.endswith(p)), None)
    module_name = path[: -len(part)] if part else path.rsplit(".", 1)[0]
    module = modules.get(module_name)
    dims = _dims(module) if module is not None else None
    if dims is None:
        raise _refuse(f"tensor '{name[:100]}' belongs to no LoRA-able module of the base model")
    fan_in, fan_out = dims
    if part is None:  # modules_to_save: the module's own weight (or bias)
        weight = getattr(module, path.rsplit(".", 1)[1], None)
        expected = list(weight.shape) if weight is not None and hasattr(weight, "shape") else None
        if expected is None or shape != expected:
            raise _refuse(f"tensor '{name[:100]}' has shape {shape}, the base module's is {expected}")
        return
    kind = LORA_PARTS[part]
    rank = shape[0] if kind in {"A", "EA"} else shape[-1]
    wanted = {"A": [rank, fan_in], "B": [fan_out, rank], "EA": [rank, fan_in], "EB": [fan_out, rank]}[kind]
    if len(shape) != 2 or shape != wanted or not 1 <= rank <= max_rank:
        raise _refuse(f"tensor '{name[:100]}' has shape {shape}, which does not fit the base module "
                      f"({fan_in} -> {fan_out}) at a rank of at most {max_rank}")
