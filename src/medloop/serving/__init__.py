"""OpenAI-compatible serving with guideline evidence: local (transformers+peft) or vLLM engines."""

from medloop.serving.app import create_app
from medloop.serving.local_engine import LocalEngine
from medloop.serving.vllm_engine import VLLMEngine

__all__ = ["LocalEngine", "VLLMEngine", "create_app"]
