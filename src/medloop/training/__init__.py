"""QLoRA SFT for Qwen3: data formats, the recipe, presets, eval loss."""

from medloop.training.recipe import TrainConfig, TrainResult, load_preset, make_config, merge, train

__all__ = ["TrainConfig", "TrainResult", "load_preset", "make_config", "merge", "train"]
