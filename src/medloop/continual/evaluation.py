"""Reports that decide whether an adapter is better: side-by-side answers, retrieval quality, MCQ accuracy.

`compare` talks to every target through the OpenAI API: local targets (the base model and adapters, with
or without evidence) run behind an in-process medloop server on loopback; external targets are any
OpenAI-compatible endpoint. So every row is measured the same way, HTTP included.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medloop.resources import DATA

DEFAULT_QUESTIONS = DATA / "report_questions.jsonl"


@dataclass
class Target:
    """`name`: the row label. Local: `model` is the served name; `rag` toggles evidence. External: `url`."""

    name: str
    model: str
    rag: bool = False
    url: str | None = None
    api_key: str = "none"


def parse_target(spec: str) -> Target:
    """`base`, `med`, `med+rag`, or `label=http://host:port/v1#model` for an external endpoint."""
    if "=" in spec and "://" in spec:
        name, rest = spec.split("=", 1)
        url, _, model = rest.partition("#")
        if not model:
            raise ValueError(f"external target needs '#model': {spec}")
        return Target(name, model, url=url)
    rag = spec.endswith("+rag")
    return Target(spec, spec.removesuffix("+rag"), rag=rag)


@dataclass
class TargetResult:
    target: Target
    answers: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        total_s, total_t = sum(self.seconds), sum(self.tokens)
        n = max(len(self.seconds), 1)
        return {"target": self.target.name, "total_s": round(total_s, 2), "mean_s": round(total_s / n, 2),
                "total_tokens": total_t, "mean_tokens": round(total_t / n, 1),
                "tokens_per_s": round(total_t / total_s, 1) if total_s else 0.0, "errors": len(self.errors)}


def load_questions(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line)["question"] for line in text.splitlines() if line.strip()]
    return [line.strip() for line in text.splitlines() if line.strip()]


def compare(targets: list[Target], questions: list[str], *, local_url: str | None, max_tokens: int = 256,
            temperature: float = 0.0, on_step: Callable[[], None] | None = None) -> list[TargetResult]:
    import openai

    results = []
    for target in targets:
        url = target.url or local_url
        if url is None:
            raise ValueError(f"target '{target.name}' is local but no local model was given (--base-model)")
        client = openai.OpenAI(base_url=url, api_key=target.api_key, max_retries=0, timeout=600)
        result = TargetResult(target)
        extra = {} if target.url else {"medloop": {"rag": target.rag}}
        # Warm-up, untimed: the first request to a target pays for model load, caches and connections,
        # which would otherwise count against whichever target happens to come first.
        with contextlib.suppress(openai.OpenAIError):
            client.chat.completions.create(model=target.model, messages=[{"role": "user", "content": questions[0]}],
                                           max_tokens=4, temperature=temperature, extra_body=extra)
        for q in questions:
            t0 = time.perf_counter()
            try:
                r = client.chat.completions.create(model=target.model, messages=[{"role": "user", "content": q}],
                                                   max_tokens=max_tokens, temperature=temperature, extra_body=extra)
                result.answers.append(r.choices[0].message.content or "")
                result.tokens.append(r.usage.completion_tokens if r.usage else 0)
            except openai.OpenAIError as e:
                result.answers.append(f"[error: {e}]")
                result.tokens.append(0)
                result.errors.append(str(e))
            result.seconds.append(time.perf_counter() - t0)
            if on_step:
                on_step()
        results.append(result)
    return results


def _bar_chart(results: list[TargetResult], key: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.target.name for r in results]
    values = [r.summary[key] for r in results]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.bar(names, values, color="#4C72B0")
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.annotate(f"{v}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _templates(autoescape: bool):
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("medloop.continual", "templates"), autoescape=autoescape,
                              keep_trailing_newline=True)


CHARTS = (("mean_s", "mean time per answer (s)"), ("mean_tokens", "mean tokens per answer"),
          ("tokens_per_s", "tokens/s"))


def write_report(results: list[TargetResult], questions: list[str], out: Path) -> tuple[Path, Path]:
    """report.md, report.html (self-contained: charts inlined as PNG) and the charts as PNG files."""
    out.mkdir(parents=True, exist_ok=True)
    cols = ["target", "total_s", "mean_s", "total_tokens", "mean_tokens", "tokens_per_s", "errors"]
    charts = []
    for key, title in CHARTS:
        png = _bar_chart(results, key, title)
        (out / f"{key}.png").write_bytes(png)
        charts.append((title, base64.b64encode(png).decode()))
    context = {"cols": cols, "results": results, "questions": questions, "charts": charts}
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_templates(autoescape=False).get_template("report.md.j2").render(context), encoding="utf-8")
    html_path.write_text(_templates(autoescape=True).get_template("report.html.j2").render(context), encoding="utf-8")
    return md_path, html_path

