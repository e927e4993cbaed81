# The two commands a fresh machine needs (see README): `make demo` and `make test`.
# Both install what they need (scripts/setup.sh makes .venv with torch 2.11.0 for libtorch).
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup build demo test bench clippy image

setup:
	./scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

demo: build
	./target/release/cellpose-train-worker demo

test: setup
	./scripts/test.sh

# Both worker images (Docker; base images made from Debian's packages where no registry answers).
image: setup
	./scripts/docker-daemon.sh start
	./docker/build-images.sh

bench: build
	./bench/run.sh

clippy: setup
	$(CARGO) clippy --release --all-targets -- -D warnings
