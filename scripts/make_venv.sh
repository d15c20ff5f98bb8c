#!/usr/bin/env bash
# The Python venv for test clients and tools (.venv), from PyPI (requirements-dev.txt).
# Reinstalls whenever requirements-dev.txt or the venv's Python changes: the stamp holds a
# sha256 of both, written only after pip succeeded.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c 'import sys' 2>/dev/null; then
  rm -rf .venv
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want="$( { sha256sum requirements-dev.txt; .venv/bin/python -VV; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
