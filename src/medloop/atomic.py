"""Files that are either the old version or the new one, never half of either (a crash mid-write included)."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
from pathlib import Path

FAILPOINT_ENV = "MEDLOOP_FAILPOINT"


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def failpoint(name: str, path: Path | None = None) -> None:
    """A named point between two writes where tests break the process: with MEDLOOP_FAILPOINT=name the process
    says so on stderr and waits there, so a test can `kill -9` it at exactly this moment; with
    MEDLOOP_FAILPOINT=name:enospc the write there fails as on a full disk (about `path`). Does nothing
    otherwise."""
    point, _, action = os.environ.get(FAILPOINT_ENV, "").partition(":")
    if point != name:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path else None)
    print(f"failpoint {name}", file=sys.stderr, flush=True)
    time.sleep(3600)
