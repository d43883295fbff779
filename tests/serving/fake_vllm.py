"""A stand-in for `vllm serve --enable-lora --reasoning-parser qwen3`, kept to vLLM's documented behaviour
(OpenAI server + runtime LoRA API), so the gateway is tested against what vLLM refuses, not against itself:

- `/v1/models`: the base model (`root` = model path, no `parent`) and each LoRA (`root` = its path,
  `parent` = the base).
- `/v1/load_lora_adapter` (only with VLLM_ALLOW_RUNTIME_LORA_UPDATING) and `/v1/unload_lora_adapter`: the
  statuses, error types and messages vLLM 0.32 gives, checked against answers recorded from the real server
  (tests/fixtures/vllm_answers.json, scripts/record_vllm_answers.py): a missing field is a 400 "Bad Request", an
  empty name or a loaded one (without `load_inplace`) a 400 "InvalidUserInput", a folder without an adapter a
  404, a broken config, missing weights or a rank above `max_lora_rank` a 500; an unknown unload a 404.
- `/v1/chat/completions`: an unknown model is a 404; Qwen3 thinking goes to `reasoning` (or, like older
  releases, `reasoning_content`), never into `content`; `enable_thinking: false` turns it off; `stop`,
  `max_tokens` (finish `length`), `stream_options.include_usage`. Errors in vLLM's shape.

The answer is deterministic: words derived from the model name, so a test can tell which adapter answered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


def vllm_error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


def missing(body: dict, field: str) -> JSONResponse:
    """vLLM's answer to a request model field left out."""
    detail = {"type": "missing", "loc": f"body.{field}", "msg": "Field required",
              "input": f"<dict of {len(body)} items>"}
    return vllm_error(400, f"1 validation error:\n  {detail}", "Bad Request", param=f"body.{field}")


def worker_failed(reason: str) -> JSONResponse:
    return vllm_error(500, f"Call to add_lora method failed: Worker failed with error '{reason}', please check the "
                           "stack trace above for the root cause", "InternalServerError")


def fake_vllm(model: str = "Qwen/Qwen3-8B", *, served_name: str | None = None, runtime_lora: bool = True,
              reasoning_field: str = "reasoning", lora_modules: dict[str, str] | None = None,
              max_lora_rank: int = 64) -> FastAPI:
    app = FastAPI()
    base = served_name or model
    loras: dict[str, str] = dict(lora_modules or {})
    app.state.loras, app.state.requests = loras, []

    @app.get("/v1/models")
    async def models():
        data = [{"id": base, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": model,
                 "parent": None}]
        data += [{"id": n, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": p,
                  "parent": base} for n, p in loras.items()]
        return {"object": "list", "data": data}

    if runtime_lora:
        @app.post("/v1/load_lora_adapter")
        async def load(request: Request):
            body = await request.json()
            for field in ("lora_name", "lora_path"):
                if field not in body:
                    return missing(body, field)
            name, path = body["lora_name"], body["lora_path"]
            if not name or not path:
                return vllm_error(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
            if name == base:
                return vllm_error(400, f"The lora adapter '{name}' conflicts with a served base model.",
                                  "InvalidUserInput")
            if name in loras and not body.get("load_inplace"):
                return vllm_error(400, f"The lora adapter '{name}' has already been loaded. If you want to load "
                                       "the adapter in place, set 'load_inplace' to True.", "InvalidUserInput")
            config = Path(path) / "adapter_config.json"
            if not config.exists():
                return vllm_error(404, f"Loading lora {name} failed: No adapter found for <path>", "NotFoundError")
            try:
                rank = json.loads(config.read_text()).get("r", 8)
            except ValueError as e:
                return worker_failed(str(e))
            if not any((Path(path) / f).exists() for f in ("adapter_model.safetensors", "adapter_model.bin")):
                return worker_failed("<path> doesn't contain tensors")
            if rank > max_lora_rank:
                return worker_failed(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
            loras[name] = path
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request):
            body = await request.json()
            if "lora_name" not in body:
                return missing(body, "lora_name")
            name = body["lora_name"]
            if not name:
                return vllm_error(400, "'lora_name' needs to be provided to unload a LoRA adapter.",
                                  "InvalidUserInput")
            if name not in loras:
                return vllm_error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            del loras[name]
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append({**body, "authorization": request.headers.get("authorization")})
        name = body.get("model")
        if name != base and name not in loras:
            return vllm_error(404, f"The model `{name}` does not exist. Valid aliases: {base}.", "NotFoundError",
                              param="model")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return vllm_error(400, "messages: field required", "BadRequestError")
        thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking", True)
        tag = name.split("@")[0]
        reasoning = [f"thinking-{tag}", "about", "it"] if thinking else []
        words = [f"answer-{tag}", "from", Path(loras.get(name, model)).name, "one", "two", "three", "four"]
        limit = body.get("max_tokens") or 16
        tokens = [("r", w) for w in reasoning] + [("c", w) for w in words]
        finish = "stop"
        if len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        content = " ".join(w for k, w in tokens if k == "c")
        for s in [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or []:
            if s in content:
                content, finish = content[: content.index(s)], "stop"
        usage = {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}
        reasoning_text = " ".join(w for k, w in tokens if k == "r") or None
        if not body.get("stream"):
            message = {"role": "assistant", "content": content, reasoning_field: reasoning_text}
            return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": name,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}

        def events():
            def chunk(delta, finish_reason=None, **extra):
                payload = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                           **extra}
                return f"data: {json.dumps(payload)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            if reasoning_text:
                for i, w in enumerate(reasoning_text.split(" ")):
                    yield chunk({reasoning_field: (" " if i else "") + w})
            for i, w in enumerate(content.split(" ") if content else []):
                yield chunk({"content": (" " if i else "") + w})
            yield chunk({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({'id': 'chatcmpl-fake', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
