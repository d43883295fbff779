"""QLoRA SFT for Qwen3: data formats, the recipe, presets, eval loss."""

from medloop.training.config import TrainConfig, load_preset, make_config


def __getattr__(name: str):
    # The recipe pulls in torch, transformers and TRL: loaded on first use, so `medloop --help` and the CLI's
    # flags (built from TrainConfig) stay quick.
    if name in {"TrainResult", "merge", "train"}:
        from medloop.training import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'medloop.training' has no attribute '{name}'")


__all__ = ["TrainConfig", "TrainResult", "load_preset", "make_config", "merge", "train"]
