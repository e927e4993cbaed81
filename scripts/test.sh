#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (which call the Python reference in .venv and
# start real Girders), and the worker images built by Docker and run against a real Girder.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CPW_PYTHON="$PWD/.venv/bin/python"

# The images: a Docker daemon (started here if none answers, stopped again at the end), both
# Dockerfile targets built; the image tests (tests/it/images) run them.
./scripts/docker-daemon.sh start
trap './scripts/docker-daemon.sh stop' EXIT
export CPW_IMAGE_CELLPOSE=cellpose-train-worker:latest CPW_IMAGE_CELLPOSESAM=cellpose-train-worker-sam:latest
# The image build waits on the network (debootstrap, pip) and on layer exports for minutes: it
# runs beside the test build, not before it.
mkdir -p target
IMAGE_CELLPOSE=$CPW_IMAGE_CELLPOSE IMAGE_CELLPOSESAM=$CPW_IMAGE_CELLPOSESAM ./docker/build-images.sh &
images=$!
cargo test --release --locked --no-run
wait "$images" || { echo "test: the worker images did not build" >&2; exit 1; }

cargo test --release --locked -- --test-threads="${TEST_THREADS:-2}"
