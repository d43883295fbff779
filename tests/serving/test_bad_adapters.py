"""A bad adapter never breaks serving: each is refused before it touches the live model, with a 4xx that names the
problem, and afterwards the base model and every loaded adapter answer token for token as before."""

import json
import os
import shutil
import struct
from pathlib import Path

import httpx
import pytest

from medloop.serving import build_app
from medloop.serving.local_engine import LocalEngine
from medloop.testing import LiveServer, make_adapter

ADMIN = {"Authorization": "Bearer k-admin"}
# The suite boots the real vLLM beside these tests: a request may take longer than httpx's 5 s default.
http = httpx.Client(timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_qwen3):
    from medloop.config import Settings

    settings = Settings(home=tmp_path_factory.mktemp("home"), serving={"admin_key": "k-admin", "max_lora_rank": 16})
    make_adapter(tiny_qwen3, settings.adapters_dir / "good", seed=1)
    return settings


def zoo(adapters: Path, tmp: Path) -> dict[str, tuple[str, int, str]]:
    """name -> (path to load, expected status, a phrase of the expected message)."""
    good = adapters / "good"
    config = json.loads((good / "adapter_config.json").read_text())

    def folder(name: str, config_text: str | None = None, weights: bool = True) -> Path:
        f = adapters / name
        f.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            (f / "adapter_config.json").write_text(config_text)
        if weights:
            shutil.copy(good / "adapter_model.safetensors", f)
        return f

    cases = {}
    cases["no adapter"] = (str(folder("empty", weights=False)), 404, "No adapter found")
    cases["broken config"] = (str(folder("broken", "{not json")), 400, "not valid JSON")
    cases["no weights"] = (str(folder("noweights", json.dumps(config), weights=False)), 400, "no weights")
    pickled = folder("pickled", json.dumps(config), weights=False)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would run a command
    cases["pickled bin"] = (str(pickled), 400, "never loaded")
    cases["foreign targets"] = (str(folder("foreign", json.dumps({**config, "target_modules": ["c_attn"]}))),
                                400, "not in the base model")
    cases["huge rank"] = (str(folder("rank", json.dumps({**config, "r": 100000}))), 400, "max_lora_rank")
    sparse = folder("sparse", json.dumps(config))
    with open(sparse / "adapter_model.safetensors", "r+b") as f:
        f.truncate(10 * 2**30)  # 10 GB, sparse: no disk is used
    cases["10 GB weights"] = (str(sparse), 413, "bytes; its tensors need")
    wrong = folder("wrongshape", json.dumps(config), weights=False)
    header = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                         {"dtype": "F32", "shape": [8, 7], "data_offsets": [0, 224]}}).encode()
    (wrong / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 224)
    cases["wrong shapes"] = (str(wrong), 400, "does not fit the base module")
    secret = tmp / "secret.safetensors"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    linked = folder("linked", json.dumps(config), weights=False)
    os.symlink(secret, linked / "adapter_model.safetensors")
    cases["weights symlinked out"] = (str(linked), 400, "leads outside")
    os.symlink(tmp, adapters / "escape")
    cases["folder symlinked out"] = (str(adapters / "escape"), 400, "must be inside")
    cases["NUL in path"] = (str(good) + "\0x", 400, "NUL")
    cases["5,000-character path"] = ("/" + "a" * 5000, 400, "longer than")
    return cases


@pytest.fixture(scope="module")
def cases(home, tmp_path_factory):
    return zoo(home.adapters_dir, tmp_path_factory.mktemp("outside"))


def answers(url: str) -> dict[str, str]:
    out = {}
    for model in ("tiny", "good"):
        body = {"model": model, "messages": [{"role": "user", "content": "血压多少算高？"}], "max_tokens": 10,
                "temperature": 0}
        r = http.post(url + "/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        out[model] = r.json()["choices"][0]["message"]["content"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["/admin/adapters", "/v1/load_lora_adapter"])
def test_every_bad_adapter_is_refused_and_serving_is_unchanged(home, tiny_qwen3, cases, endpoint):
    engine = LocalEngine(str(tiny_qwen3), served_name="tiny", max_lora_rank=home.serving.max_lora_rank)
    with LiveServer(build_app(home, engine, None, adapters={"good": str(home.adapters_dir / "good")})) as live:
        before = answers(live.url)
        for name, (path, status, phrase) in cases.items():
            body = {"action": "load", "name": "bad", "path": path} if endpoint == "/admin/adapters" else \
                {"lora_name": "bad", "lora_path": path}
            r = http.post(live.url + endpoint, json=body, headers=ADMIN)
            assert r.status_code == status and phrase in r.json()["error"]["message"], (name, r.text)
            assert "secret-hash" not in r.text
            assert answers(live.url) == before, name
            assert http.get(live.url + "/health").json()["status"] == "ok"
        assert "bad" not in {m["id"] for m in http.get(live.url + "/v1/models").json()["data"]}


@pytest.mark.slow
def test_a_load_that_fails_after_touching_the_model_is_undone(home, tiny_qwen3, monkeypatch):
    """The first adapter wraps the base model and injects LoRA layers in place; a failure half-way used to leave
    a model that answered every client with AttributeError ('disable_adapter'). Now it is rebuilt."""
    import peft

    engine = LocalEngine(str(tiny_qwen3), served_name="tiny")
    with LiveServer(build_app(home, engine, None)) as live:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "高血压"}], "max_tokens": 10,
                "temperature": 0}
        before = http.post(live.url + "/v1/chat/completions", json=body).json()["choices"][0]["message"]

        def half_load(model, path, adapter_name, **kw):
            config = peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            peft.inject_adapter_in_model(config, model, adapter_name)
            raise RuntimeError("disk error half-way")

        monkeypatch.setattr(peft.PeftModel, "from_pretrained", half_load)
        r = http.post(live.url + "/admin/adapters", headers=ADMIN,
                       json={"action": "load", "name": "m", "path": str(home.adapters_dir / "good")})
        assert r.status_code == 400 and "could not be loaded" in r.json()["error"]["message"]
        monkeypatch.undo()
        after = http.post(live.url + "/v1/chat/completions", json=body)
        assert after.status_code == 200 and after.json()["choices"][0]["message"] == before
        assert http.get(live.url + "/health").status_code == 200
        ok = http.post(live.url + "/admin/adapters", headers=ADMIN,
                        json={"action": "load", "name": "m", "path": str(home.adapters_dir / "good")})
        assert ok.status_code == 200


@pytest.mark.slow
def test_health_reports_a_broken_engine(home, tiny_qwen3):
    engine = LocalEngine(str(tiny_qwen3), served_name="tiny")
    engine.broken = "the model could not be restored"
    with LiveServer(build_app(home, engine, None)) as live:
        r = http.get(live.url + "/health")
        assert r.status_code == 503 and r.json()["reason"] == "the model could not be restored"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        assert http.post(live.url + "/v1/chat/completions", json=body).status_code == 503
