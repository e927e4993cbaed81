#!/usr/bin/env bash
# `make image`: builds both worker images from the Dockerfile, the way a lab does, and prints each
# one's size and build time:
#   cellpose-train-worker:latest      target cellpose     ("Cellpose retrain", the default)
#   cellpose-train-worker-sam:latest  target cellposesam  ("Cellpose-SAM retrain")
# Base images missing locally are made from Debian's packages first (docker/base-images.sh: no
# registry needed). A rebuild with nothing changed takes seconds (Docker's layer cache); after a
# source change the build stage recompiles only this crate (cargo's cache mounts).
#
# IMAGE_CELLPOSE / IMAGE_CELLPOSESAM change the tags.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE_CELLPOSE=${IMAGE_CELLPOSE:-cellpose-train-worker:latest}
IMAGE_CELLPOSESAM=${IMAGE_CELLPOSESAM:-cellpose-train-worker-sam:latest}
# BuildKit builds (cache mounts, only the stages a target needs). Docker 23+ clients build with it
# through buildx; Debian's docker.io (20.10) client has it built in behind DOCKER_BUILDKIT=1.
if [ -z "${DOCKER:-}" ]; then
  if docker buildx version >/dev/null 2>&1; then DOCKER=docker
  elif [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker
  else DOCKER=docker; fi
fi
export DOCKER DOCKER_BUILDKIT=1

DOCKER=$DOCKER docker/base-images.sh

build() {
  local target=$1 tag=$2 t0=$SECONDS
  "$DOCKER" build --network host --target "$target" -t "$tag" . >"target/image-$target.log" 2>&1 || {
    tail -40 "target/image-$target.log" >&2
    echo "image: building $tag failed (full log: target/image-$target.log)" >&2
    exit 1
  }
  local size
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag")
  awk -v tag="$tag" -v target="$target" -v size="$size" -v s=$((SECONDS - t0)) \
    'BEGIN { printf "image: %-34s target %-12s %6.2f GB  built in %d s\n", tag, target, size / 1e9, s }' >&2
}
mkdir -p target
build cellpose "$IMAGE_CELLPOSE"
build cellposesam "$IMAGE_CELLPOSESAM"
