"""OpenAI-compatible serving with guideline evidence: local (transformers+peft) or vLLM engines."""

from medloop.serving.app import build_app

__all__ = ["build_app"]
