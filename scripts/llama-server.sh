#!/usr/bin/env bash
# llama.cpp's `llama-server` for `medloop serve --engine llamacpp` and for the suite's real-llama.cpp tests, built
# from the llama.cpp sources vendored in the llama-cpp-python sdist (pinned by version and hash below: no
# prebuilt server binary on the package registry has known provenance), with the machine's cmake and compiler.
# Beside the binary: llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, their
# `conversion` and `gguf-py` packages), which turn a Hugging Face base and a PEFT adapter into GGUF.
#
#   scripts/llama-server.sh [DIR]        # default .llama-cpp; idempotent: a finished build is kept
#
# About 12 minutes on two cores and 80 MB of download the first time; seconds after.
set -euo pipefail
DIR="${1:-.llama-cpp}"
VERSION=0.3.36
BUILD=2  # bump when the build flags change: a build of other flags is rebuilt
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
MARK="$DIR/.built-$VERSION-$BUILD"
if [ -f "$MARK" ] && "$DIR/bin/llama-server" --version >/dev/null 2>&1; then
  echo "llama-server ready in $DIR/bin"
  exit 0
fi
trap 'echo "error: building llama-server $VERSION into $DIR failed (see the lines above)" >&2' ERR
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  "llama-cpp-python==$VERSION" -d "$WORK"
echo "$SHA256  $WORK/llama_cpp_python-$VERSION.tar.gz" | sha256sum -c --quiet -
tar xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
# AVX2 and FMA, not -march=native: built for this machine's AVX-512 (GCC 12), llama-server crashed loading any
# quantised GGUF (its AVX-512 weight-repacking kernels; `--no-repack` avoided it), measured on the embedded SmolLM2
# Q4_1. The AVX2 kernels repack too.
cmake -S "$SRC" -B "$WORK/build" -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_BMI2=ON -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >/dev/null
rm -rf "$DIR" && mkdir -p "$DIR/bin" "$DIR/convert"
cp "$WORK/build/bin/llama-server" "$DIR/bin/"
cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/convert_lora_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py" "$SRC/LICENSE" \
  "$DIR/convert/"
"$DIR/bin/llama-server" --version
touch "$MARK"
echo "llama-server ready in $DIR/bin"
