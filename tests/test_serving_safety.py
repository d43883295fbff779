"""No request can break another: hostile bodies beside good ones, clients leaving mid-batch, mixed sampling.

Each test compares what a client receives under hostile or concurrent traffic with what the same request
yields alone: token for token.
"""

import asyncio
import json
import random

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from conftest import LiveServer
from medloop.serving import build_app
from medloop.serving.local_engine import LocalEngine
from medloop.testing import stream_succeeded


@pytest.fixture(scope="module")
def engine(tiny_qwen3):
    return LocalEngine(str(tiny_qwen3), served_name="tiny", max_batch_size=16)


@pytest.fixture(scope="module")
def live(engine, tmp_path_factory):
    from medloop.config import Settings

    settings = Settings(home=tmp_path_factory.mktemp("home"), max_tokens_limit=64)
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
