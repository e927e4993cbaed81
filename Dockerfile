# cellpose-train-worker as a NimbusImage worker image.
#
#   make image       both targets, tagged as below (builds the base images first where no
#                    registry can be reached: docker/base-images.sh)
#   docker build --network host -t cellpose-train-worker:latest .                       (Cellpose retrain)
#   docker build --network host --target cellposesam -t cellpose-train-worker-sam:latest .  (Cellpose-SAM retrain)
#   (put built-in weights such as cyto3, cytotorch_0, nucleitorch_0, cpsam_v2 into docker/models/
#    first: they are copied into the image; nothing is downloaded at run time)
#
# Needs BuildKit (Docker 23+, or DOCKER_BUILDKIT=1) for the cache mounts. No `# syntax=` line on
# purpose: BuildKit's built-in Dockerfile frontend reads this file, so an offline build does not
# have to pull a frontend image from Docker Hub.
#
# ENTRYPOINT is NimbusImage's one-shot worker contract
#   (--apiUrl URL --token T --request interface|compute --parameters JSON --datasetId ID);
# the long-running queue worker is the `serve` subcommand:
#   docker run --gpus all -e CPW_GIRDER__API_URL=... -e CPW_GIRDER__API_KEY=... cellpose-train-worker serve
# docker/compose.yml runs `serve` next to the mock Girder.

# ---- build: the Rust binary against libtorch from PyPI's torch wheel (pinned with tch 0.24.0) ----
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# The same absolute venv path in both stages: the binary's rpath points into it.
ENV VENV=/opt/venv
RUN python3 -m venv $VENV && $VENV/bin/pip install --no-cache-dir torch==2.11.0 nvidia-cuda-crt==13.0.88
WORKDIR /src
# Only what cargo reads: the manifest's test and bench targets must exist, but a change to any
# other test file must not rebuild the image.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
COPY csrc csrc
COPY tests/it/main.rs tests/it/main.rs
COPY bench/dynamics.rs bench/cpsam_predict.rs bench/rasterize.rs bench/
COPY src src
# The registry and target folders are cache mounts: an image rebuilt after a source change
# recompiles this crate, not tch and the 300 crates below it.
RUN --mount=type=cache,id=cpw-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=cpw-cargo-target,target=/src/target \
    ln -sfn "$($VENV/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')" /opt/libtorch \
    && LIBTORCH=/opt/libtorch cargo build --release --locked --bin cellpose-train-worker \
    && cp target/release/cellpose-train-worker /usr/local/bin/cellpose-train-worker
# The runtime's libraries: the binary's linker closure plus what libtorch/cuDNN dlopen, at their
# site-packages paths (libtorch's rpaths are relative to them), nothing else of the wheels.
COPY docker/runtime-libs.sh /usr/local/bin/runtime-libs.sh
RUN sh /usr/local/bin/runtime-libs.sh /usr/local/bin/cellpose-train-worker \
        $VENV/lib/python3.11/site-packages /stage \
    && install -D /usr/local/bin/cellpose-train-worker /stage/usr/local/bin/cellpose-train-worker

# ---- runtime: the binary, the libraries it loads, built-in weights; no pip, no compilers ----
FROM debian:bookworm-slim AS runtime
COPY --from=build /stage/ /
# A user of its own: the worker needs no privilege (it talks HTTP and writes its work folder);
# the NVIDIA runtime gives any user the GPU devices.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/cellpose-train-worker \
        --create-home --shell /usr/sbin/nologin worker
COPY docker/models/ /models/
COPY worker.toml /etc/cellpose-train-worker/worker.toml
ENV CELLPOSE_LOCAL_MODELS_PATH=/models \
    CPW_PATHS__MODELS_DIR=/models \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/cellpose-train-worker

ENTRYPOINT ["/usr/local/bin/cellpose-train-worker"]
# The labels NimbusImage reads to list a worker image in its UI; every tool's image has these.
LABEL isUPennContrastWorker="" \
      isAnnotationWorker="" \
      isGPUWorker="true" \
      com.nvidia.volumes.needed="nvidia_driver" \
      interfaceCategory="Cellpose" \
      advancedOptionsPanel="False" \
      annotationConfigurationPanel="False" \
      annotationShape="polygon"

# ---- one image per tool: NimbusImage lists a tool per image, by its labels ----
# The same binary trains both families; an `interface` request names only the image, so the
# image says which tool it registers (CPW_ONESHOT__TOOL). `compute` goes by the fields sent.
#   docker build --target cellposesam -t cellpose-train-worker-sam:latest .
FROM runtime AS cellposesam
ENV CPW_ONESHOT__TOOL=cellposesam
LABEL interfaceName="Cellpose-SAM retrain" \
      defaultToolName="Cellpose-SAM retrain" \
      description="Fine-tunes a Cellpose-SAM (cellpose 4) model on the tagged annotations of this dataset (Rust, libtorch)"

# The default target (last stage): "Cellpose retrain" (CPnet, cellpose 3).
FROM runtime AS cellpose
ENV CPW_ONESHOT__TOOL=cellpose
LABEL interfaceName="Cellpose retrain" \
      defaultToolName="Cellpose retrain" \
      description="Fine-tunes a Cellpose model on the tagged annotations of this dataset (Rust, libtorch)"
