#!/usr/bin/env bash
# Label-mask rasterization vs the reference worker's skimage polygon2mask loop; prints both sides and
# the ratio. Extra arguments go to the bench: --polygons N (10000), --python-subset N (500).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench rasterize -- "$@"
