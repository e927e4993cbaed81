#!/usr/bin/env bash
# Creates .venv with the pinned torch (whose libtorch the Rust build links against) and the Python
# reference packages the tests use, .venv-cp4 with the cellpose 4 reference (Cellpose-SAM), and
# .venv-girder with the real Girder 5 the tests start, and .venv-bioimageio with the BioImage.IO
# checker (bioimageio.core) the export test runs.
# Idempotent: each part does nothing when its stamp matches its requirements file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian packages the tests run: Docker (the worker images are built and run by the tests),
# debootstrap (the base images, made locally where no registry can be reached) and redis-server
# (the broker girder_worker takes the image tests' jobs from). Installed only
# when missing, and only where apt can (root on a Debian machine); elsewhere the image tests say
# what is missing.
missing_debs=()
command -v dockerd >/dev/null 2>&1 || missing_debs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing_debs+=(debootstrap)
# the Celery broker of the girder_worker chain the image tests launch the images through
command -v redis-server >/dev/null 2>&1 || missing_debs+=(redis-server)
if [ ${#missing_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing_debs[*]} from Debian's packages" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing_debs[@]}" >/dev/null
  else
    echo "setup: ${missing_debs[*]} missing and not installable here (needs root and apt)" >&2
  fi
fi
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

# The BioImage.IO checker (`bioimageio test`, tests/it/export.rs). Its own venv: no bioimageio.core
# release accepts bioimageio.spec 0.5.14.x, so the resolved list goes in with --no-deps. torch and
# cellpose 3.1.1.2 (which the package's weights need) come from .venv through a .pth file.
bio_stamp=.venv-bioimageio/.requirements.sha
bio_want=$(sha256sum tools/requirements-bioimageio.txt | cut -d' ' -f1)
if ! { [ -f "$bio_stamp" ] && [ "$(cat "$bio_stamp")" = "$bio_want" ]; }; then
  echo "setup: creating .venv-bioimageio (bioimageio.spec 0.5.14.3, bioimageio.core 0.11.0; ~280 MB)" >&2
  [ -x .venv-bioimageio/bin/python ] || "$PY" -m venv .venv-bioimageio
  .venv-bioimageio/bin/python -m pip install -q --no-deps -r tools/requirements-bioimageio.txt
  ref_site=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
  bio_site=$(.venv-bioimageio/bin/python -c 'import site; print(site.getsitepackages()[0])')
  echo "$ref_site" > "$bio_site/zz_cellpose_reference.pth"
  .venv-bioimageio/bin/python -c \
    'import bioimageio.core, bioimageio.spec, torch, cellpose.resnet_torch; assert bioimageio.spec.__version__ == "0.5.14.3", bioimageio.spec.__version__'
  echo "$bio_want" > "$bio_stamp"
fi
