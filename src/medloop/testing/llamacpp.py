"""llama.cpp's llama-server as the suite builds it (scripts/llama-server.sh, in a thread: about 12 minutes the
first time on two cores, overlapping the other tests; seconds once built)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from medloop.testing.background import Background
from medloop.testing.paths import REPO

# scripts/llama-server.sh builds here (ignored by git); MEDLOOP_LLAMA_CPP names another place
LLAMA_CPP = Path(os.environ.get("MEDLOOP_LLAMA_CPP") or REPO / ".llama-cpp")


class LlamaCppBuild(Background):
    def __init__(self, folder: Path = LLAMA_CPP):
        super().__init__(self._build, "llama-cpp-build")
        self.folder = folder

    def start(self) -> LlamaCppBuild:
        self._thread.start()
        return self

    def _build(self) -> None:
        done = subprocess.run(["bash", str(REPO / "scripts" / "llama-server.sh"), str(self.folder)],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            self.error = f"scripts/llama-server.sh failed:\n{(done.stdout + done.stderr)[-3000:]}"

    def wait(self, timeout: float = 3600) -> Path:
        """The folder with bin/llama-server and the converters, or a RuntimeError saying why not."""
        self._join(timeout, "llama-server is still building")
        return self.folder
