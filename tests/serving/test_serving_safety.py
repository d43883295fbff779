"""No request can break another, down to the sampler: hostile bodies and whatever the schema accepts beside good
ones, clients leaving mid-batch, mixed sampling, a step that raises, requests joining and leaving a running batch.

Each test compares what a client receives under hostile or concurrent traffic with what the same request
yields alone: token for token.
"""

import asyncio
import json
import random
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from medloop.serving import build_app, decoding
from medloop.serving.local_engine import LocalEngine
from medloop.testing import LiveServer, engine_bodies, send_together, stream_succeeded


@pytest.fixture(scope="module")
def live(engine, tmp_path_factory):
    from medloop.config import Settings

    settings = Settings(home=tmp_path_factory.mktemp("home"), limits={"max_tokens": 3000})
    with LiveServer(build_app(settings, engine, None)) as server:
        yield server


def good(question: str = "高血压的降压目标？", **kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": question}], "max_tokens": 12,
            "temperature": 0, **kw}


async def post_all(url: str, bodies: list) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=b) for b in bodies))


def answer(response: httpx.Response) -> tuple[str, int]:
    data = response.json()
    return data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"]


def alone(url: str, body: dict) -> tuple[str, int]:
    """What a request gets with nobody beside it."""
    return answer(httpx.post(url + "/v1/chat/completions", json=body, timeout=120))


@pytest.mark.parametrize("hostile, param", [
    ({"chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs.tokenize"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}]}, "messages.0.content"),
    ({"seed": 2**70}, "seed"),
    ({"messages": [{"role": "user", "content": " ".join(map(str, range(2500)))}]}, "messages"),  # > context
])
def test_a_hostile_body_fails_alone(live, hostile, param):
    alone = [answer(r) for r in asyncio.run(post_all(live.url, [good("q0"), good("q1"), good("q2")]))]
    responses = asyncio.run(post_all(live.url, [{**good(), **hostile}, good("q0"), good("q1"), good("q2")]))
    bad, *rest = responses
    assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    assert [r.status_code for r in rest] == [200, 200, 200]
    assert [answer(r) for r in rest] == alone


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
fields = st.sampled_from(["model", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream",
                          "stream_options", "chat_template_kwargs", "medloop", "max_completion_tokens", "tools",
                          "logit_bias", "x-extra"])


@pytest.mark.slow
@hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(overrides=st.dictionaries(fields, json_values, max_size=4))
def test_any_body_beside_a_good_request_leaves_its_answer_unchanged(live, overrides):
    expected = getattr(test_any_body_beside_a_good_request_leaves_its_answer_unchanged, "expected", None)
    if expected is None:
        expected = answer(asyncio.run(post_all(live.url, [good("固定问题")]))[0])
        test_any_body_beside_a_good_request_leaves_its_answer_unchanged.expected = expected
    hostile = {**good(max_tokens=8), **overrides}
    fixed, other = asyncio.run(post_all(live.url, [good("固定问题"), hostile]))
    assert other.status_code < 500, other.text
    assert fixed.status_code == 200 and answer(fixed) == expected


async def stream_one(client: httpx.AsyncClient, url: str, body: dict, leave_after: int | None) -> dict:
    """Stream one answer; with leave_after, hang up after that many lines (0: before the first)."""
    lines = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if leave_after is not None and len(lines) >= leave_after:
                return {"left": True}
            if line:
                lines.append(line)
    text = "".join(json.loads(x[5:])["choices"][0]["delta"].get("content") or "" for x in lines
                   if x.startswith("data: {") and json.loads(x[5:]).get("choices"))
    usage = next((json.loads(x[5:])["usage"] for x in lines if x.startswith("data: {") and '"usage"' in x), None)
    return {"left": False, "ok": stream_succeeded(r.status_code, lines), "text": text,
            "tokens": usage["completion_tokens"] if usage else None}


@pytest.mark.slow
def test_clients_leaving_at_random_moments_never_change_a_survivors_answer(live):
    questions = [f"问题{i}：血压{120 + i}" for i in range(20)]
    body = {q: good(q, max_tokens=16, stream=True, stream_options={"include_usage": True}) for q in questions}
    solo = {}
    for q in questions:
        text, tokens = answer(httpx.post(live.url + "/v1/chat/completions", json={**body[q], "stream": False},
                                         timeout=60))
        solo[q] = (text, tokens)

    async def round_(rng: random.Random):
        async with httpx.AsyncClient(timeout=120) as client:
            async def maybe_cancel(task):
                await asyncio.sleep(rng.uniform(0, 0.05))
                task.cancel()

            tasks, cancellers = {}, []
            for q in questions:
                leave = rng.choice([None, None, None, 0, 1, 3, 6])
                tasks[q] = asyncio.create_task(stream_one(client, live.url, body[q], leave))
                if rng.random() < 0.15:  # vanish while the batch is being prepared
                    cancellers.append(asyncio.create_task(maybe_cancel(tasks[q])))
            await asyncio.gather(*cancellers)
            return {q: await t for q, t in tasks.items() if not t.cancelled()}

    survivors = 0
    for seed in range(4):
        results = asyncio.run(round_(random.Random(seed)))
        for q, r in results.items():
            if r.get("left"):
                continue
            survivors += 1
            assert r["ok"] and (r["text"], r["tokens"]) == solo[q], q
    assert survivors >= 20


@pytest.mark.slow
def test_mixed_sampling_settings_share_one_batch_and_keep_their_own_randomness(live, engine):
    bodies = [good(f"问题{i}", temperature=t, top_p=p, seed=s, max_tokens=10)
              for i, (t, p, s) in enumerate([(0.7, 1.0, 1), (1.0, 0.9, 2), (1.3, 0.8, 3), (0.0, 1.0, None),
                                             (0.7, 1.0, 4), (1.0, 0.95, 5), (0.5, 1.0, 6), (0.0, 1.0, None)])]
    alone = [answer(httpx.post(live.url + "/v1/chat/completions", json=b, timeout=60)) for b in bodies]
    before = dict(engine.stats)
    together = [answer(r) for r in asyncio.run(post_all(live.url, bodies))]
    batches = engine.stats["batches"] - before["batches"]
    assert together == alone
    assert batches <= 3  # 8 requests with 7 different sampling settings: not one batch each
    sampled = [text for (text, _), b in zip(alone, bodies, strict=True) if b["temperature"] > 0]
    assert len(set(sampled)) == len(sampled)  # distinct seeds really sample differently


@pytest.mark.slow
def test_a_vanishing_temperature_is_greedy_and_its_neighbours_keep_their_answers(live):
    """temperature 1e-300 with top_p 0.5 is a valid body: in float32 it is 0, and logits / 0 emptied the nucleus
    and failed the whole batch (12, 9 and 11 of 12 neighbours got a 500). As in vLLM, it is greedy now."""
    neighbours = [good(f"邻居问题{i}") for i in range(12)]
    expected = [alone(live.url, b) for b in neighbours]
    hostile = good("温度极小", temperature=1e-300, top_p=0.5)
    for _ in range(3):
        first, *rest = asyncio.run(post_all(live.url, [hostile, *neighbours]))
        assert first.status_code == 200, first.text
        assert [r.status_code for r in rest] == [200] * 12
        assert [answer(r) for r in rest] == expected
        assert answer(first) == alone(live.url, good("温度极小"))  # greedy


def test_a_nucleus_smaller_than_the_top_token_keeps_the_top_token(engine):
    import torch

    from medloop.serving.engine import GenerationRequest

    logits = torch.tensor([0.0, 5.0, 1.0, 4.9])
    for seed in range(20):
        sampler = decoding.Sampler(GenerationRequest("m", [], temperature=1.0, top_p=1e-9, seed=seed), "cpu")
        assert sampler(logits) == 1


def poisoned_forward(engine, monkeypatch, poison: int):
    """The engine's forward, raising on a batch that holds the row whose prompt carries `poison`: once in a decode
    step (the batch is then rebuilt row by row), and whenever that row is prefilled again."""
    original = engine._forward
    seen = {"prefilled": False}

    def forward(ids, mask, positions, cache, adapters):
        guilty = [r for r in engine._batch.rows if poison in r.job.prompt_ids]
        if cache is None and (ids == poison).any():
            if seen["prefilled"]:
                raise RuntimeError("kernel fault")
            seen["prefilled"] = True
        elif cache is not None and guilty:
            raise RuntimeError("kernel fault")
        return original(ids, mask, positions, cache, adapters)

    monkeypatch.setattr(engine, "_forward", forward)


def test_a_step_that_raises_fails_only_the_row_that_caused_it(engine, live, monkeypatch):
    neighbours = [good(f"问题{i}", max_tokens=10) for i in range(6)]
    expected = [alone(live.url, b) for b in neighbours]
    poison = engine.tokenizer("☢", add_special_tokens=False)["input_ids"][-1]
    poisoned_forward(engine, monkeypatch, poison)
    before = engine.stats["isolated"]
    guilty, *rest = asyncio.run(post_all(live.url, [good("☢ 问题", max_tokens=10), *neighbours]))
    assert guilty.status_code == 500 and guilty.json()["error"]["type"] == "server_error", guilty.text
    assert [r.status_code for r in rest] == [200] * 6
    assert [answer(r) for r in rest] == expected  # token for token what each gets alone
    assert engine.stats["isolated"] > before
    assert 'status="500"' in httpx.get(live.url + "/metrics").text


def test_parameters_the_sampler_cannot_honour_fail_that_request_alone_with_a_400(engine, live, monkeypatch):
    neighbours = [good(f"问题{i}", temperature=0.7, seed=i) for i in range(4)]
    expected = [alone(live.url, b) for b in neighbours]
    original = decoding.Sampler.__call__

    def sample(self, logits):
        if self.temperature == 0.123:
            raise ValueError("no such distribution")
        return original(self, logits)

    monkeypatch.setattr(decoding.Sampler, "__call__", sample)
    bad, *rest = asyncio.run(post_all(live.url, [good("x", temperature=0.123), *neighbours]))
    assert bad.status_code == 400 and "sampling failed" in bad.json()["error"]["message"]
    assert [answer(r) for r in rest] == expected
    assert 'status="400"' in httpx.get(live.url + "/metrics").text


@pytest.fixture(scope="module")
def fixed(live):
    bodies = [good("固定问题一"), good("固定问题二", temperature=0.8, seed=7)]
    return bodies, [alone(live.url, b) for b in bodies]


@pytest.mark.slow
@hsettings(max_examples=200, derandomize=True, deadline=None, database=None,
           suppress_health_check=list(HealthCheck))
@given(body=engine_bodies("tiny", fields=LocalEngine.serves))
def test_schema_valid_values_reach_the_engine_and_never_harm_a_neighbour(live, fixed, body):
    bodies, expected = fixed
    *neighbours, (status, result) = send_together(live.url, [*bodies, body])
    assert status < 500, result
    if body.get("stream") and status == 200:
        assert stream_succeeded(status, result), result[-3:]
    for (code, data), want in zip(neighbours, expected, strict=True):
        assert code == 200 and (data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"]) == want


def test_a_short_request_is_answered_while_a_long_one_is_still_running(live, engine):
    """Requests join a running batch between decode steps: an 8-token request used to wait for a 4096-token
    one's whole answer (55 s)."""
    events = []

    def long_request():
        body = good("请写一篇很长的文章", max_tokens=2500, stream=True, temperature=0.9, seed=1, ignore_eos=True)
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and not events:
                    events.append("long started")
                if "finish_reason" in line and '"finish_reason":null' not in line:
                    events.append("long finished")
                if "short answered" in events:
                    return  # the point is made: leave (the row stops at the next step)

    thread = threading.Thread(target=long_request)
    thread.start()
    while not events:
        time.sleep(0.05)
    short = alone(live.url, good("短问题", max_tokens=4))
    events.append("short answered")
    thread.join()
    assert short[1] <= 4
    assert events == ["long started", "short answered"]


def test_a_client_that_leaves_stops_its_generation(live, engine):
    """Streaming or not: the row leaves the batch at the next step once its client is gone (a non-streaming
    request whose client left used to generate for ~13 more minutes)."""
    for stream in (False, True):
        body = good("一个会被放弃的长回答", max_tokens=2500, stream=stream, temperature=0.9, seed=2)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(live.url + "/v1/chat/completions", json=body, timeout=1.5) if not stream else \
                _read_then_leave(live.url, body)
        deadline = time.monotonic() + 30
        while len(engine._batch) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(engine._batch) == 0, f"stream={stream}: the abandoned row is still generating"
        steps = engine.stats["steps"]
        time.sleep(0.5)
        assert engine.stats["steps"] == steps


def _read_then_leave(url: str, body: dict) -> None:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=1.5) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                raise httpx.ReadTimeout("leaving after the first chunk")


@pytest.mark.slow
def test_sigterm_drains_with_a_deadline(tiny_qwen3, settings, tmp_path):
    """SIGTERM used to take 7 minutes (the batch in hand ran to its end): now requests in flight get
    shutdown_timeout_s, then they end with an error and the process exits."""
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "MEDLOOP_HOME": str(settings.home), "MEDLOOP_SERVING__SHUTDOWN_TIMEOUT_S": "2",
           "MEDLOOP_LIMITS__MAX_TOKENS": "4000", "MEDLOOP_SERVING__SERVED_MODEL_NAME": "tiny"}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "medloop.cli", "serve", "--base-model", str(tiny_qwen3),
                             "--no-rag", "--port", "0"], env=env, stderr=open(log, "w"), text=True)
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", log.read_text()):
                url = m.group(1)
            time.sleep(0.2)
        assert url, f"the server did not say where it listens: {log.read_text()[-500:]}"
        body = good("请写很长的文章", max_tokens=3500, stream=True, temperature=0.9, seed=3)
        lines = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and not lines:
                    proc.send_signal(signal.SIGTERM)
                    sent = time.monotonic()
                lines.append(line)
        assert r.status_code == 200
        proc.wait(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught, once shut down
        assert time.monotonic() - sent < 30
        data = [x for x in lines if x]
        assert data[-1] == "data: [DONE]" and "shutting down" in data[-2]  # cut short, and said so
        assert "Traceback" not in log.read_text()
    finally:
        proc.kill()
