#!/usr/bin/env bash
# Creates .venv with the pinned torch (whose libtorch the Rust build links against) and the Python
# reference packages the tests use, .venv-cp4 with the cellpose 4 reference (Cellpose-SAM), and
# .venv-girder with the real Girder 5 the tests start.
# Idempotent: each part does nothing when its stamp matches its requirements file.
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

if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -e .venv/torch/lib/libtorch.so ]; }; then
  echo "setup: creating .venv (torch 2.11.0 + reference packages; first run downloads ~4 GB)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r tools/requirements.txt
  site=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  # .cargo/config.toml points LIBTORCH at .venv/torch; the link hides the python version.
  ln -sfn "$site" .venv/torch
  echo "$want" > "$stamp"
fi

# cellpose 4.2.1.1 beside cellpose 3.1.1.2: a --target folder put first on PYTHONPATH by the tests
# (tests/it/helpers.rs run_python_cp4). --no-deps: torch and the rest come from .venv.
stamp4=.venv-cp4/.requirements.sha
want4=$(sha256sum tools/requirements-cp4.txt | cut -d' ' -f1)
if ! { [ -f "$stamp4" ] && [ "$(cat "$stamp4")" = "$want4" ]; }; then
  echo "setup: creating .venv-cp4 (cellpose 4.2.1.1, segment-anything, torchvision; ~25 MB)" >&2
  rm -rf .venv-cp4
  .venv/bin/python -m pip install -q --no-deps --target .venv-cp4 -r tools/requirements-cp4.txt
  PYTHONPATH="$PWD/.venv-cp4" .venv/bin/python -c \
    'import cellpose, cellpose.vit, cellpose.models, torch; from cellpose.version import version; assert version == "4.2.1.1", version; assert torch.__version__.startswith("2.11.0")'
  echo "$want4" > "$stamp4"
fi
