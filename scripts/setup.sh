#!/usr/bin/env bash
# Creates .venv with the pinned torch (whose libtorch the Rust build links against) and the Python
# reference packages the tests use. Idempotent: does nothing when the venv is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha
want=$(sha256sum tools/requirements.txt | cut -d' ' -f1)

# The real Girder 5 the tests start (tests/real_girder/launcher.py) lives in a venv of its own:
# its pins (numpy among them) differ from the reference packages'.
girder_stamp=.venv-girder/.requirements.sha
girder_want=$(sha256sum tools/requirements-girder.txt | cut -d' ' -f1)
if ! { [ -f "$girder_stamp" ] && [ "$(cat "$girder_stamp")" = "$girder_want" ]; }; then
  echo "setup: creating .venv-girder (Girder 5.0.21 + plugins on mongomock, ~600 MB)" >&2
  [ -x .venv-girder/bin/python ] || "$PY" -m venv .venv-girder
  .venv-girder/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv-girder/bin/python -m pip install -q -r tools/requirements-girder.txt
  echo "$girder_want" > "$girder_stamp"
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -e .venv/torch/lib/libtorch.so ]; then
  exit 0
fi
echo "setup: creating .venv (torch 2.11.0 + reference packages; first run downloads ~4 GB)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r tools/requirements.txt
site=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
# .cargo/config.toml points LIBTORCH at .venv/torch; the link hides the python version.
ln -sfn "$site" .venv/torch
echo "$want" > "$stamp"
