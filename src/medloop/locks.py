"""One process at a time on a data home's job: a lock file, held for a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout


@contextlib.contextmanager
def exclusive(path: Path, wait_s: float = 0) -> Iterator[bool]:
    """Hold the lock file `path` for the block: True once held, False when another process held it for `wait_s`
    seconds (0: do not wait). A killed holder's lock is released by the OS, so none goes stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = FileLock(path).acquire(timeout=wait_s)
    except Timeout:
        yield False
        return
    with lock:
        yield True
