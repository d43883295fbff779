"""The gateway, driven over loopback by the official openai client, on a tiny random Qwen3."""

import asyncio
import shutil
import threading

import httpx
import openai
import pytest
from fake_vllm import fake_vllm

from medloop import testing
from medloop.knowledge import KnowledgeStore, ingest_paths
from medloop.retrieval import Retriever, sync_index
from medloop.serving import build_app
from medloop.serving.engine import GenerationRequest
from medloop.serving.local_engine import LocalEngine
from medloop.serving.reasoning import ReasoningParser, split_reasoning
from medloop.serving.vllm_engine import VLLMEngine
from medloop.testing import GUIDELINES, LiveServer, ScriptedEngine, make_adapter, sample_index

ADMIN = {"Authorization": "Bearer k-admin"}
ZH_Q = "高血压患者的降压目标是多少？"
EN_Q = "What HbA1c target do the diabetes standards recommend for adults?"


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_qwen3, embedder):
    from medloop.config import Settings

    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, serving={"admin_key": "k-admin"})
    sample_index(settings, embedder)
    make_adapter(tiny_qwen3, settings.adapters_dir / "a", seed=1)
    make_adapter(tiny_qwen3, settings.adapters_dir / "b", seed=2)
    return settings


@pytest.fixture(scope="module")
def engine(tiny_qwen3, home):
    return LocalEngine(str(tiny_qwen3), served_name="qwen3-tiny",
                       adapters={"a": str(home.adapters_dir / "a"), "b": str(home.adapters_dir / "b")})


@pytest.fixture(scope="module")
def server(home, engine, embedder):
    retriever = Retriever(home, embedder=embedder)
    with LiveServer(build_app(home, engine, retriever)) as live:
        yield live


def ask(client, question, model="qwen3-tiny", **kw):
    return testing.ask(client, question, model, **kw)


def test_models_lists_base_and_adapters(server):
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {"qwen3-tiny", "a", "b"}
    assert models["a"].parent == "qwen3-tiny"


def test_chat_answers_with_chinese_evidence_block(server):
    r = ask(server.client(), ZH_Q)
    content = r.choices[0].message.content
    assert "最新临床依据" in content and "中国高血压防治指南" in content and "2024" in content
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    evidence = r.model_extra["evidence"]
    assert evidence[0]["guideline_id"] == "cn-hypertension"
    assert {e["version"] for e in evidence if e["guideline_id"] == "cn-hypertension"} == {"2024"}
    assert r.usage.prompt_tokens > 100  # the evidence went into the prompt, not only after the answer


def test_english_question_gets_english_block_and_newest_version(server):
    r = ask(server.client(), EN_Q)
    content = r.choices[0].message.content
    assert "Latest clinical evidence" in content and "最新临床依据" not in content
    ada = [e for e in r.model_extra["evidence"] if e["guideline_id"] == "ada-standards-of-care"]
    assert ada and {e["version"] for e in ada} == {"2025"}


def test_no_block_without_relevant_evidence_or_when_disabled(server):
    r = ask(server.client(), "骨折怎么处理？")
    assert "最新临床依据" not in r.choices[0].message.content and r.model_extra["evidence"] == []
    r = ask(server.client(), ZH_Q, extra_body={"medloop": {"rag": False}})
    assert "最新临床依据" not in r.choices[0].message.content and r.model_extra["evidence"] == []
    r = ask(server.client(), ZH_Q, extra_body={"medloop": {"k": 1}})
    assert len(r.model_extra["evidence"]) == 1


def test_streaming_matches_plain_and_ends_with_evidence_and_done(server):
    client = server.client()
    plain = ask(client, ZH_Q).choices[0].message.content
    chunks = list(ask(client, ZH_Q, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and chunks[-1].usage.completion_tokens > 0
    assert finals[0].model_extra["evidence"] == ask(client, ZH_Q).model_extra["evidence"]
    # without the block in the content, the list still arrives (it was lost before: it rode on the block's last line)
    quiet = list(ask(client, ZH_Q, stream=True, extra_body={"medloop": {"append_evidence": False}}))
    assert "最新临床依据" not in "".join(c.choices[0].delta.content or "" for c in quiet if c.choices)
    assert [c.model_extra["evidence"] for c in quiet if c.model_extra.get("evidence")] == [finals[0].model_extra[
        "evidence"]]
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
        "model": "qwen3-tiny", "messages": [{"role": "user", "content": ZH_Q}], "max_tokens": 4, "stream": True,
    }) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_strings_and_max_tokens(server):
    client = server.client()
    kw = {"extra_body": {"medloop": {"rag": False}}, "max_tokens": 12}
    full = ask(client, "hi", model="a", **kw)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 12
    text = full.choices[0].message.content
    stop = text[len(text) // 2:][:2]  # a piece from the middle of the answer
    cut = ask(client, "hi", model="a", stop=[stop], **kw)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_two_adapters_give_different_answers_for_the_same_seed(server):
    client = server.client()
    kw = {"temperature": 0.8, "seed": 7, "max_tokens": 16, "extra_body": {"medloop": {"rag": False}}}
    a1 = ask(client, "hello", model="a", **kw).choices[0].message.content
    a2 = ask(client, "hello", model="a", **kw).choices[0].message.content
    b = ask(client, "hello", model="b", **kw).choices[0].message.content
    base = ask(client, "hello", **kw).choices[0].message.content
    assert a1 == a2  # same seed, same adapter: same answer
    assert len({a1, b, base}) == 3


def test_concurrent_requests_keep_their_own_adapter(server):
    client = server.client()
    kw = {"max_tokens": 10, "extra_body": {"medloop": {"rag": False}}}
    expected = {m: ask(client, "hi", model=m, **kw).choices[0].message.content for m in ("a", "b", "qwen3-tiny")}
    results, errors = [], []

    def worker(model):
        try:
            results.append((model, ask(client, "hi", model=model, **kw).choices[0].message.content))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(m,)) for m in ["a", "b", "qwen3-tiny"] * 4]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(results) == 12
    assert all(text == expected[model] for model, text in results)


def test_unknown_model_is_a_404_in_openai_shape(server):
    with pytest.raises(openai.NotFoundError) as e:
        ask(server.client(), "hi", model="nope")
    assert e.value.body["type"] == "not_found_error" and "nope" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}],
                                                temperature=5)


def test_hot_swap_under_load(server, home):
    client = server.client()
    kw = {"max_tokens": 10, "extra_body": {"medloop": {"rag": False}}}
    b_answer = ask(client, "swap", model="b", **kw).choices[0].message.content
    shutil.copytree(home.adapters_dir / "a", home.adapters_dir / "a-copy", dirs_exist_ok=True)
    errors, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                list(ask(client, "under load", model="a", stream=True, max_tokens=24))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    [t.start() for t in threads]
    r = httpx.post(server.url + "/admin/adapters", json={"action": "load", "name": "a",
                                                         "path": str(home.adapters_dir / "b"), "version": "v2"},
                   headers=ADMIN, timeout=60)
    stop.set()
    [t.join() for t in threads]
    assert r.status_code == 200 and not errors
    assert ask(client, "swap", model="a", **kw).choices[0].message.content == b_answer
    assert {m.id: m.model_extra.get("version") for m in client.models.list().data}["a"] == "v2"
    httpx.post(server.url + "/admin/adapters", json={"action": "load", "name": "a",
                                                     "path": str(home.adapters_dir / "a-copy")},
               headers=ADMIN, timeout=60)


def test_admin_rejects_paths_outside_the_registry(server, tmp_path):
    r = httpx.post(server.url + "/admin/adapters", json={"action": "load", "name": "x",
                                                         "path": str(tmp_path)}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "path"
    r = httpx.post(server.url + "/admin/adapters", json={"action": "load", "name": "../etc", "path": "/etc"},
                   headers=ADMIN)
    assert r.status_code == 400


def test_metrics_and_health(server):
    ask(server.client(), ZH_Q)
    text = httpx.get(server.url + "/metrics").text
    assert 'medloop_requests_total{model="qwen3-tiny",status="ok"}' in text
    assert "medloop_retrieval_seconds_count" in text and "medloop_tokens_total" in text
    assert httpx.get(server.url + "/health").json()["index_version"] >= 1


def test_a_launched_vllm_that_exited_makes_the_gateway_unhealthy():
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    assert "exited (code 0)" in VLLMEngine("http://127.0.0.1:9", process=gone).health()
    assert VLLMEngine("http://127.0.0.1:9").health() is None  # a remote vLLM answers for itself, per request


def test_new_guideline_is_cited_without_restart(tiny_qwen3, engine, embedder, settings):
    store = KnowledgeStore(settings.knowledge_db)
    ingest_paths(store, [GUIDELINES / "cn-hypertension-2024.md"])
    sync_index(settings, store, embedder=embedder)
    with LiveServer(build_app(settings, engine, Retriever(settings, embedder=embedder))) as live:
        assert ask(live.client(), "流感的抗病毒治疗").model_extra["evidence"] == []
        ingest_paths(store, [GUIDELINES / "cn-influenza-2025.md"])
        sync_index(settings, store, embedder=embedder)
        evidence = ask(live.client(), "流感的抗病毒治疗").model_extra["evidence"]
        assert evidence[0]["guideline_id"] == "cn-influenza"


# ---- reasoning (Qwen3 <think>) ----

def test_reasoning_parser_splits_whole_and_streamed_output():
    text = "<think>\nfirst think\n</think>\n\nthe answer"
    assert split_reasoning(text) == ("first think", "the answer")
    assert split_reasoning("plain answer") == ("", "plain answer")
    for size in (1, 2, 3, 5):
        parser, r, c = ReasoningParser(), "", ""
        for i in range(0, len(text), size):
            dr, dc = parser.feed(text[i:i + size])
            r, c = r + dr, c + dc
        dr, dc = parser.flush()
        assert (r + dr, c + dc) == ("first think", "the answer")


def test_reasoning_is_returned_apart_from_content(settings):
    app = build_app(settings, ScriptedEngine("<think>\n先看指南\n</think>\n\n答案是130/80"), None)
    with LiveServer(app) as live:
        r = ask(live.client(), "q", model="thinker")
        msg = r.choices[0].message
        assert msg.content == "答案是130/80" and msg.model_extra["reasoning_content"] == "先看指南"
        assert msg.model_extra["reasoning"] == "先看指南"
        chunks = list(ask(live.client(), "q", model="thinker", stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks)
        assert (reasoning, content) == ("先看指南", "答案是130/80")


def test_enable_thinking_false_reaches_the_chat_template(engine):
    from medloop.serving.engine import GenerationRequest

    msgs = [{"role": "user", "content": "hi"}]
    off = engine.tokenizer.decode(engine.prompt_ids(GenerationRequest("qwen3-tiny", msgs,
                                                                      chat_template_kwargs={"enable_thinking": False})))
    on = engine.tokenizer.decode(engine.prompt_ids(GenerationRequest("qwen3-tiny", msgs)))
    assert off.endswith("<think>\n\n</think>\n\n") and on.endswith("<|im_start|>assistant\n")


# ---- the vLLM engine, against a stand-in that keeps to vLLM's documented behaviour (tests/serving/fake_vllm.py) ----

def reasoning_of(message) -> tuple[str | None, str | None]:
    extra = message.model_extra or {}
    return extra.get("reasoning"), extra.get("reasoning_content")


def test_vllm_engine_relays_reasoning_and_hot_swaps_adapters(home, embedder):
    fake = fake_vllm()
    with LiveServer(fake) as upstream:
        app = build_app(home, VLLMEngine(upstream.url, timeout=30, served_name="medloop-qwen3"),
                        Retriever(home, embedder=embedder), adapters={"med": str(home.adapters_dir / "b")})
        with LiveServer(app) as gateway:
            client = gateway.client()
            assert {m.id for m in client.models.list().data} == {"medloop-qwen3", "med"}
            assert set(fake.state.loras) == {"med@1"}  # loaded through /v1/load_lora_adapter
            msg = ask(client, "hi", model="med", extra_body={"medloop": {"rag": False}}).choices[0].message
            assert msg.content.startswith("answer-med from b") and "thinking" not in msg.content
            assert reasoning_of(msg) == ("thinking-med about it", "thinking-med about it")
            assert fake.state.requests[-1]["model"] == "med@1"
            chunks = list(ask(client, ZH_Q, model="med", stream=True))
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            streamed = "".join(reasoning_of(c.choices[0].delta)[0] or "" for c in chunks if c.choices)
            assert "thinking" not in content and "最新临床依据" in content
            assert streamed.split() == ["thinking-med", "about", "it"]
            off = ask(client, "hi", model="med", extra_body={"chat_template_kwargs": {"enable_thinking": False},
                                                              "medloop": {"rag": False}}).choices[0].message
            assert reasoning_of(off) == (None, None) and off.content.startswith("answer-med")
            r = httpx.post(gateway.url + "/admin/adapters", json={"action": "load", "name": "med",
                                                                  "path": str(home.adapters_dir / "a")},
                           headers=ADMIN, timeout=60)
            assert r.status_code == 200 and set(fake.state.loras) == {"med@2"}  # the old one unloaded once idle
            assert "from a" in ask(client, "hi", model="med", extra_body={"medloop": {"rag": False}}
                                   ).choices[0].message.content
            with pytest.raises(openai.NotFoundError):
                ask(client, "hi", model="ghost")


def test_vllm_engine_relays_older_reasoning_content_field(home):
    with LiveServer(fake_vllm("m", reasoning_field="reasoning_content")) as upstream:
        with LiveServer(build_app(home, VLLMEngine(upstream.url, served_name="m"), None)) as gateway:
            msg = ask(gateway.client(), "hi", model="m").choices[0].message
            assert reasoning_of(msg) == ("thinking-m about it", "thinking-m about it")
            chunks = list(ask(gateway.client(), "hi", model="m", stream=True))
            assert "".join(reasoning_of(c.choices[0].delta)[1] or "" for c in chunks if c.choices).split() == [
                "thinking-m", "about", "it"]


def test_gateway_restarted_against_a_long_running_vllm_starts_cleanly(home):
    a, b = str(home.adapters_dir / "a"), str(home.adapters_dir / "b")
    fake = fake_vllm()
    with LiveServer(fake) as upstream:
        def gateway(path):
            return LiveServer(build_app(home, VLLMEngine(upstream.url, served_name="m"), None,
                                        adapters={"med": path}))

        with gateway(b) as g1:
            httpx.post(g1.url + "/admin/adapters", json={"action": "load", "name": "med", "path": a},
                       headers=ADMIN, timeout=60)
        assert set(fake.state.loras) == {"med@2"}
        with gateway(b) as g2:  # a new name past every name the upstream has seen: no 400 for a loaded name
            assert set(fake.state.loras) == {"med@2", "med@3"}
            assert "from b" in ask(g2.client(), "hi", model="med").choices[0].message.content
        with gateway(a) as g3:  # the same folder already served upstream: adopted, not loaded twice
            assert set(fake.state.loras) == {"med@2", "med@3"}
            assert "from a" in ask(g3.client(), "hi", model="med").choices[0].message.content


def test_vllm_upstream_down_then_back(home):
    with LiveServer(fake_vllm()) as upstream:
        port = upstream.port
        with LiveServer(build_app(home, VLLMEngine(upstream.url, timeout=5, served_name="m"), None)) as gateway:
            assert ask(gateway.client(), "hi", model="m").choices[0].finish_reason == "stop"
            upstream.__exit__(None, None, None)
            with pytest.raises(openai.InternalServerError) as e:
                ask(gateway.client(), "hi", model="m")
            assert e.value.status_code == 503 and "upstream unavailable" in e.value.body["message"]
            with LiveServer(fake_vllm(), port=port):
                assert ask(gateway.client(), "hi", model="m").choices[0].finish_reason == "stop"


def test_upstream_gets_its_own_key_never_a_client_key(home, monkeypatch):
    from pydantic import SecretStr

    fake = fake_vllm()
    settings = home.model_copy(deep=True)
    settings.serving.api_keys, settings.vllm.api_key = [SecretStr("client-key")], SecretStr("up-key")
    with LiveServer(fake) as upstream:
        engine = VLLMEngine(upstream.url, served_name="m", api_key=settings.vllm.api_key.get_secret_value())
        with LiveServer(build_app(settings, engine, None)) as gateway:
            ask(gateway.client("client-key"), "hi", model="m")
    assert fake.state.requests[-1]["authorization"] == "Bearer up-key"


def test_launch_passes_lora_flags_and_configured_adapters_are_adopted(home, monkeypatch):
    from medloop.cli import serve as cli
    from medloop.serving import vllm_engine

    path = str((home.adapters_dir / "a").resolve())
    seen = {}

    class Process:
        def poll(self):
            return None

        def terminate(self):
            seen["terminated"] = True

        def wait(self, timeout=None):
            return 0

    def popen(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        return Process()

    monkeypatch.setattr(vllm_engine.shutil, "which", lambda name: "/usr/bin/vllm")
    monkeypatch.setattr(vllm_engine.subprocess, "Popen", popen)
    fake = fake_vllm("Qwen/Qwen3-8B", lora_modules={"medical": path})  # what vLLM serves after that launch
    with LiveServer(fake) as upstream:
        app = cli.build_server(home, engine="vllm", base_model="Qwen/Qwen3-8B", adapters={"medical": path},
                               rag=False, launch=True, port=upstream.port)
        with LiveServer(app) as gateway:
            assert {m.id for m in gateway.client().models.list().data} == {"Qwen/Qwen3-8B", "medical"}
            assert "from a" in ask(gateway.client(), "hi", model="medical").choices[0].message.content
    cmd = seen["cmd"]
    assert cmd[:3] == ["vllm", "serve", "Qwen/Qwen3-8B"] and "--enable-lora" in cmd
    assert cmd[cmd.index("--max-loras") + 1] == "4" and cmd[cmd.index("--max-lora-rank") + 1] == "64"
    assert cmd[cmd.index("--reasoning-parser") + 1] == "qwen3"
    assert "--enable-auto-tool-choice" in cmd and cmd[cmd.index("--tool-call-parser") + 1] == "hermes"
    assert cmd[cmd.index("--lora-modules") + 1] == f"medical={path}"
    assert seen["env"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert set(fake.state.loras) == {"medical"} and seen["terminated"]  # adopted, not loaded again


def test_medloop_speaks_vllms_lora_api_with_vllms_refusals(server, home):
    url = server.url + "/v1/load_lora_adapter"
    body = {"lora_name": "c", "lora_path": str(home.adapters_dir / "a")}
    assert httpx.post(url, json=body, headers=ADMIN).status_code == 200
    again = httpx.post(url, json=body, headers=ADMIN)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    assert httpx.post(url, json={**body, "load_inplace": True}, headers=ADMIN).status_code == 200
    unload = server.url + "/v1/unload_lora_adapter"
    assert httpx.post(unload, json={"lora_name": "c"}, headers=ADMIN).status_code == 200
    assert httpx.post(unload, json={"lora_name": "c"}, headers=ADMIN).status_code == 404


def test_vllm_engine_upstream_faults(home):
    engine = VLLMEngine("http://127.0.0.1:9", timeout=2, served_name="m")
    engine.upstream_base = "m"
    from medloop.serving.engine import GenerationRequest

    async def first(req):
        async for d in engine.stream(req):
            return d

    from medloop.serving.engine import EngineError

    with pytest.raises(EngineError) as e:
        asyncio.run(first(GenerationRequest("m", [{"role": "user", "content": "x"}])))
    assert e.value.kind == "unavailable"


HELLO, IM_END = 9707, 151645  # "Hello" and the end of a turn in Qwen3's vocabulary


def test_the_local_engine_serves_logprobs_bias_stop_ids_and_penalties(server):
    """What its sampler does of the chat contract (`decoding.Sampler`): each field changes the answer as it says,
    plain and streamed. That it does so as vLLM does: tests/serving/test_vllm.py."""
    c = server.client()

    def answer(tokens=8, extra=None, **fields):
        body = {"medloop": {"rag": False}, **(extra or {})}
        return ask(c, "固定问题一", max_tokens=tokens, extra_body=body, **fields)

    r = answer(tokens=6, logprobs=True, top_logprobs=3)
    scored = r.choices[0].logprobs.content
    assert len(scored) == r.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in scored)
    assert all(t.token == t.top_logprobs[0].token and t.logprob == t.top_logprobs[0].logprob for t in scored)  # greedy
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob for t in scored)
    chunks = list(ask(c, "固定问题一", max_tokens=6, logprobs=True, top_logprobs=3, stream=True,
                      extra_body={"medloop": {"rag": False}}))
    assert [t.token for ch in chunks if ch.choices and ch.choices[0].logprobs
            for t in ch.choices[0].logprobs.content] == [t.token for t in scored]
    assert answer(tokens=4).choices[0].logprobs is None  # not asked, not sent

    assert answer(tokens=4, logit_bias={str(HELLO): 100}).choices[0].message.content == "Hello" * 4
    stopped = answer(tokens=4, logit_bias={str(HELLO): 100}, extra={"stop_token_ids": [HELLO]})
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("", "stop")
    assert stopped.usage.completion_tokens == 1
    ends = answer(logit_bias={str(IM_END): 100})
    assert ends.usage.completion_tokens == 1 and ends.choices[0].finish_reason == "stop"
    held = answer(logit_bias={str(IM_END): 100}, extra={"min_tokens": 3})
    assert held.usage.completion_tokens == 4 and held.choices[0].finish_reason == "stop"

    plain = answer(tokens=32).choices[0].message.content
    assert answer(tokens=32, extra={"repetition_penalty": 2.0}).choices[0].message.content != plain
    assert answer(tokens=32, frequency_penalty=2.0).choices[0].message.content != plain
    assert answer(tokens=32, presence_penalty=-2.0).choices[0].message.content != plain
    bad = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "qwen3-tiny", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999999": 5}})
    assert bad.status_code == 400, bad.text  # a token past the vocabulary: this request's fault


def test_incremental_decoding_reassembles_multibyte_text_exactly():
    from transformers import AutoTokenizer

    from medloop.serving.decoding import Detokenizer, Job, Row, Sampler
    from medloop.testing import TOKENIZER

    class Out:
        def __init__(self):
            self.deltas = []

        def put_nowait(self, d):
            self.deltas.append(d)

    class Loop:
        def call_soon_threadsafe(self, fn, arg):
            fn(arg)

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    text = "高血压患者的降压目标是<130/80 mmHg 🩺，β受体阻滞剂 ok。"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = Out()
    request = GenerationRequest("m", [], max_tokens=len(ids) + 5, temperature=0)
    row = Row(Job(request, [1, 2, 3], Loop(), out), "__base__", Sampler(request, "cpu"), Detokenizer(tok), 3)
    for i in ids + [151645]:
        row.accept(i, {151645})
    pieces = [d.text for d in out.deltas if d.text]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    assert out.deltas[-1].finish_reason == "stop" and out.deltas[-1].completion_tokens == len(ids) + 1
