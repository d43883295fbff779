"""llama.cpp's llama-server as the suite builds it (scripts/llama-server.sh, in a thread: about 12 minutes the
first time on two cores, overlapping the other tests; seconds once built)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from medloop.testing.paths import REPO

# scripts/llama-server.sh builds here (ignored by git); MEDLOOP_LLAMA_CPP names another place
LLAMA_CPP = Path(os.environ.get("MEDLOOP_LLAMA_CPP") or REPO / ".llama-cpp")


class LlamaCppBuild:
    def __init__(self, folder: Path = LLAMA_CPP):
        self.folder, self.error = folder, None
        self._thread = threading.Thread(target=self._build, name="llama-cpp-build", daemon=True)

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
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("llama-server is still building")
        if self.error:
            raise RuntimeError(self.error)
        return self.folder
