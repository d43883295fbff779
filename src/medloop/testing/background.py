"""Work a suite fixture starts in a thread so that it overlaps the other tests (building llama-server, installing
and booting vLLM), handed over once done or refused with what went wrong."""

from __future__ import annotations

import threading


class Background:
    """A thread that runs `target` and leaves `error` set when it failed."""

    def __init__(self, target, name: str):
        self.error: str | None = None
        self._thread = threading.Thread(target=target, name=name, daemon=True)

    def _join(self, timeout: float, busy: str) -> None:
        """Wait for the thread; a RuntimeError saying `busy` if it is still running, or its error if it failed."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(busy)
        if self.error:
            raise RuntimeError(self.error)
