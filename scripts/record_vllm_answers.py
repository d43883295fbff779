"""Record how a real vLLM answers the requests whose refusals medloop imitates (runtime LoRA API, chat refusals), into
tests/fixtures/vllm_answers.json. The fake upstream of the tests (tests/serving/fake_vllm.py) and medloop's own
vLLM-style endpoints are checked against this file, and the suite checks that the real server still answers as
recorded.

    .vllm-venv/bin/python -m vllm.entrypoints.openai.api_server --model M --served-model-name tiny --enable-lora \\
        --max-lora-rank 64 --lora-modules a=ADAPTER ...   (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)
    .venv/bin/python scripts/record_vllm_answers.py http://127.0.0.1:8011 --base tiny --adapter ADAPTER

Request bodies name folders by placeholder ({adapter}, {empty}, {missing}, {broken}, {noweights}, {bigrank}), so a
replay fills in its own; `cases()` makes those folders.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import httpx

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vllm_answers.json"

# (name, path, body): in order; "load new" must come before the requests that find the name loaded.
CASES = [
    ("load a new adapter", "/v1/load_lora_adapter", {"lora_name": "new", "lora_path": "{adapter}"}),
    ("load a loaded name again", "/v1/load_lora_adapter", {"lora_name": "new", "lora_path": "{adapter}"}),
    ("reload in place", "/v1/load_lora_adapter", {"lora_name": "new", "lora_path": "{adapter}", "load_inplace": True}),
    ("a folder without an adapter", "/v1/load_lora_adapter", {"lora_name": "e", "lora_path": "{empty}"}),
    ("a folder that does not exist", "/v1/load_lora_adapter", {"lora_name": "m", "lora_path": "{missing}"}),
    ("a broken adapter_config.json", "/v1/load_lora_adapter", {"lora_name": "bc", "lora_path": "{broken}"}),
    ("an adapter without weights", "/v1/load_lora_adapter", {"lora_name": "nw", "lora_path": "{noweights}"}),
    ("a rank above --max-lora-rank", "/v1/load_lora_adapter", {"lora_name": "br", "lora_path": "{bigrank}"}),
    ("load without lora_name", "/v1/load_lora_adapter", {"lora_path": "{adapter}"}),
    ("load without lora_path", "/v1/load_lora_adapter", {"lora_name": "x"}),
    ("load with an empty name", "/v1/load_lora_adapter", {"lora_name": "", "lora_path": "{adapter}"}),
    ("load under the base model's name", "/v1/load_lora_adapter", {"lora_name": "{base}", "lora_path": "{adapter}"}),
    ("unload an unknown name", "/v1/unload_lora_adapter", {"lora_name": "zzz"}),
    ("unload without lora_name", "/v1/unload_lora_adapter", {}),
    ("unload with an empty name", "/v1/unload_lora_adapter", {"lora_name": ""}),
    ("unload a loaded adapter", "/v1/unload_lora_adapter", {"lora_name": "new"}),
    ("chat with an unknown model", "/v1/chat/completions",
     {"model": "zz", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
]


def cases(adapter: Path, scratch: Path) -> dict[str, str]:
    """The folders the placeholders name, made under `scratch` from a working `adapter`."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    folders = {name: scratch / name for name in ("empty", "broken", "noweights", "bigrank")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    (folders["broken"] / "adapter_config.json").write_text("{not json")
    (folders["noweights"] / "adapter_config.json").write_text(json.dumps(config))
    (folders["bigrank"] / "adapter_config.json").write_text(json.dumps({**config, "r": 100000}))
    shutil.copy(adapter / "adapter_model.safetensors", folders["bigrank"])
    return {"adapter": str(adapter), "missing": str(scratch / "missing"), **{k: str(v) for k, v in folders.items()}}


def fill(body, values: dict[str, str]):
    if isinstance(body, dict):
        return {k: fill(v, values) for k, v in body.items()}
    if isinstance(body, list):
        return [fill(v, values) for v in body]
    return body.format(**values) if isinstance(body, str) else body


def replay(url: str, values: dict[str, str], headers: dict | None = None) -> list[dict]:
    """Send every case to the server at `url`; its answers, in the golden file's shape."""
    answers = []
    for name, path, body in CASES:
        r = httpx.post(url.rstrip("/") + path, json=fill(body, values), headers=headers or {}, timeout=300)
        error = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
        answers.append({"case": name, "path": path, "body": body, "status": r.status_code,
                        "type": error.get("type"), "message": error.get("message") if error else r.text})
    return answers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--base", required=True, help="the base model's served name")
    parser.add_argument("--adapter", required=True, type=Path, help="a LoRA adapter folder vLLM can load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        values = {**cases(args.adapter.resolve(), Path(scratch)), "base": args.base}
        answers = replay(args.url, values)
    version = httpx.get(args.url.rstrip("/") + "/version").json().get("version")
    GOLDEN.write_text(json.dumps({"vllm": version, "answers": answers}, indent=2, ensure_ascii=False) + "\n")
    print(f"recorded {len(answers)} answers of vLLM {version} in {GOLDEN}")


if __name__ == "__main__":
    main()
