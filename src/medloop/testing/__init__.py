"""Helpers for the tests, benches and examples of a source checkout, one module per concern: `paths` (what a
checkout keeps under tests/fixtures), `models` (a tiny random Qwen3 on the real Qwen3 tokenizer, random LoRA adapters),
`http` (an app served on loopback in a thread, requests sent together), `months` (the loop's and the gate's months),
`guidelines` (bad files, PDFs, the sample index), `strategies` (hypothesis bodies), `vllm` (the real vLLM harness),
`llamacpp` (the llama-server build), `engines` (stand-in engines). Everything is importable from here.

Every file they read lies in the repository (`tests/fixtures/`, `src/medloop/data/`): a clone stands alone.
"""

from medloop.resources import SAMPLE_GUIDELINES as GUIDELINES
from medloop.serving.live import LiveServer
from medloop.testing.engines import ScriptedEngine
from medloop.testing.guidelines import sample_index, write_bad_guideline_zoo, write_pdf
from medloop.testing.http import ask, send_together, stream_succeeded
from medloop.testing.llamacpp import LLAMA_CPP, LlamaCppBuild
from medloop.testing.models import (
    CHATML,
    QWEN3_SHAPES,
    make_adapter,
    qwen3_shaped,
    registry_with_candidates,
    smollm2_folder,
    tiny_qwen3,
    tiny_word_qwen3,
)
from medloop.testing.months import (
    MONTH_TOPICS,
    SMOLLM2_LOOP,
    SMOLLM2_TRAINING,
    WORD_TRAINING,
    month_suite_home,
    paraphrased_month,
    run_month,
)
from medloop.testing.paths import BAD_GUIDELINES, FIXTURES, FRESH_MONTHS, REPO, SABOTAGE, SFT, THIRD_MONTHS, TOKENIZER
from medloop.testing.strategies import engine_bodies
from medloop.testing.vllm import VLLM_ARGS, VLLM_VENV, RealVLLM

__all__ = [
    "GUIDELINES", "LiveServer", "REPO", "FIXTURES", "TOKENIZER", "SFT", "SABOTAGE", "BAD_GUIDELINES",
    "FRESH_MONTHS", "THIRD_MONTHS", "tiny_qwen3", "CHATML", "tiny_word_qwen3", "make_adapter", "QWEN3_SHAPES",
    "qwen3_shaped", "smollm2_folder", "registry_with_candidates", "stream_succeeded", "send_together", "ask",
    "MONTH_TOPICS", "paraphrased_month", "WORD_TRAINING", "SMOLLM2_TRAINING", "SMOLLM2_LOOP", "month_suite_home",
    "run_month",
    "write_pdf", "write_bad_guideline_zoo", "sample_index", "engine_bodies", "VLLM_VENV", "VLLM_ARGS", "RealVLLM",
    "ScriptedEngine", "LLAMA_CPP", "LlamaCppBuild",
]
