"""A stand-in for `vllm serve --enable-lora --reasoning-parser qwen3`, kept to vLLM's documented behaviour
(OpenAI server + runtime LoRA API), so the gateway is tested against what vLLM refuses, not against itself:

- `/v1/models`: the base model (`root` = model path, no `parent`) and each LoRA (`root` = its path,
  `parent` = the base).
- `/v1/load_lora_adapter` (only with VLLM_ALLOW_RUNTIME_LORA_UPDATING): both fields required (400); a name
  already loaded is a 400 unless `load_inplace`; a folder without `adapter_config.json` is a 400.
- `/v1/unload_lora_adapter`: an unknown name is a 404.
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


def vllm_error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status)


def fake_vllm(model: str = "Qwen/Qwen3-8B", *, served_name: str | None = None, runtime_lora: bool = True,
              reasoning_field: str = "reasoning", lora_modules: dict[str, str] | None = None) -> FastAPI:
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
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return vllm_error(400, "Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError")
            if name in loras and not body.get("load_inplace"):
                return vllm_error(400, f"The lora adapter '{name}' has already been loaded. If you want to load "
                                       "the adapter in place, set 'load_inplace' to True.", "BadRequestError")
            if not (Path(path) / "adapter_config.json").exists():
                return vllm_error(400, f"Loading lora {name} failed: No adapter found for {path}", "BadRequestError")
            loras[name] = path
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request):
            name = (await request.json()).get("lora_name")
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
            return vllm_error(404, f"The model `{name}` does not exist.", "NotFoundError")
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
