"""Every code block in README.md and docs/*.md runs as the user would type it (Sybil), or is marked
`<!-- skip: next "why" -->` with the reason it cannot run here (a GPU, a Qwen3 checkout, a server that runs until
stopped).

- `bash` blocks run as one `bash -e` script, with `medloop` on PATH, in a folder holding the sample guidelines
  (`guidelines/`) and a data home (`./medloop-data`) where they are already ingested: what a user has after README
  line 1.
- `python` blocks run in one namespace per page; docs/serving.md's run against `medloop serve --demo` on
  127.0.0.1:8000, started for them as the page says.
- `toml` blocks are settings files: each must load into `Settings`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

os.environ["HF_HUB_OFFLINE"] = "1"
DOC_PAGES = ["README.md", "docs/*.md"]
SERVER_PAGES = ["docs/serving.md"]  # their Python runs against `medloop serve --demo`


@pytest.fixture(scope="session")
def doc_workdir(tmp_path_factory) -> Path:
    """A folder as a user's after README line 1: `guidelines/` (the samples) and `medloop-data/` with them ingested."""
    from medloop.resources import SAMPLE_GUIDELINES

    work = tmp_path_factory.mktemp("docs")
    shutil.copytree(SAMPLE_GUIDELINES, work / "guidelines")
    ingest = subprocess.run([_medloop(), "ingest", "guidelines"], cwd=work, env=_env(work), capture_output=True,
                            text=True, timeout=600)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    return work


@pytest.fixture(scope="session")
def demo_server(doc_workdir):
    """`medloop serve --demo` on its documented address, for the pages whose Python talks to it."""
    import httpx

    log = doc_workdir / "serve.log"
    process = subprocess.Popen([_medloop(), "serve", "--demo"], cwd=doc_workdir, env=_env(doc_workdir),
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"`medloop serve --demo` exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get("http://127.0.0.1:8000/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"`medloop serve --demo` did not come up: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _medloop() -> str:
    return str(Path(sys.executable).parent / "medloop")


def _env(work: Path) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MEDLOOP_HOME": str(work / "medloop-data"), "MEDLOOP_CONFIG": str(work / "medloop.toml"),
            "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def run_bash(example) -> None:
    work = example.namespace["doc_workdir"]
    done = subprocess.run(["bash", "-e", "-c", example.parsed], cwd=work, env=_env(work), capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"{example.path}:{example.line}: exited {done.returncode}\n{example.parsed}\n"
                             f"{(done.stdout + done.stderr)[-3000:]}")


def load_settings_file(example) -> None:
    from medloop.config import Settings

    Settings(**tomllib.loads(example.parsed))  # a field that does not validate raises, naming it


_parsers = [SkipParser(), CodeBlockParser("bash", run_bash), CodeBlockParser("toml", load_settings_file)]
pytest_collect_file = (
    Sybil(parsers=_parsers + [PythonCodeBlockParser()], patterns=DOC_PAGES, excludes=SERVER_PAGES,
          fixtures=["doc_workdir"])
    + Sybil(parsers=_parsers + [PythonCodeBlockParser()], patterns=SERVER_PAGES,
            fixtures=["doc_workdir", "demo_server"],
            name="served")
).pytest()
