#!/usr/bin/env bash
# Makes the two base images the Dockerfile names, without a registry:
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, trimmed as Debian's slim image is
#   rust:1.95-bookworm     that + the C/C++ toolchain from Debian + this machine's Rust toolchain
# and loads them into the local Docker under exactly those names, so `docker build` of the
# project's Dockerfile needs no Docker Hub. A lab with a registry never runs this: its Docker pulls
# the official images of the same names. An image that is already present is left alone.
#
# Both carry this machine's trust store (/etc/ssl/certs/ca-certificates.crt and the extra CAs in
# /usr/local/share/ca-certificates, so an `apt-get install ca-certificates` in a later layer, which
# regenerates the bundle, keeps them) and pip's `cert` setting: on machines whose egress goes
# through an inspecting proxy, PyPI and crates.io answer a container only through that store.
#
# Usage: docker/base-images.sh            (DOCKER=/usr/bin/docker to pick a client)
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SLIM=debian:bookworm-slim
# The Dockerfile's build stage is the pin: its tag says which Rust the image is built with.
RUST_TAG=$(sed -n 's/^FROM \(rust:[^ ]*\) AS build.*/\1/p' Dockerfile)
[ -n "$RUST_TAG" ] || { echo "base-images: no 'FROM rust:... AS build' in Dockerfile" >&2; exit 1; }
RUST_VERSION=${RUST_TAG#rust:}
RUST_VERSION=${RUST_VERSION%%-*}

work=$(mktemp -d /var/tmp/cpw-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# The trust store and pip's setting, laid into a root file system folder.
add_trust() {
  local root=$1
  install -d "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
}

make_slim() {
  command -v debootstrap >/dev/null || { echo "base-images: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  local root=$work/rootfs t0=$SECONDS
  echo "base-images: debootstrap bookworm (minbase) from $MIRROR" >&2
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  # what Debian's slim images leave out: docs, man pages, locales but C, apt's downloaded lists
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$root/etc/apt/apt.conf.d/docker-no-recommends"
  find "$root/usr/share/doc" -mindepth 2 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/{man,info,locale,lintian}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log \
    "$root"/tmp/* "$root"/root/.cache
  add_trust "$root"
  tar -C "$root" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$SLIM" >/dev/null
  echo "base-images: $SLIM made in $((SECONDS - t0)) s" >&2
}

make_rust() {
  local rustc have_version sysroot ctx=$work/rust t0=$SECONDS
  rustc=$(command -v rustc) || { echo "base-images: no rustc on this machine to copy" >&2; exit 1; }
  have_version=$(rustc --version | awk '{print $2}')
  case "$have_version" in
    "$RUST_VERSION" | "$RUST_VERSION".*) ;;
    *) echo "base-images: the Dockerfile builds with $RUST_TAG but this machine's rustc is $have_version" >&2; exit 1 ;;
  esac
  sysroot=$(rustc --print sysroot)
  mkdir -p "$ctx"
  # the toolchain without its HTML documentation (~800 MB of the 1.4 GB)
  cp -a "$sysroot" "$ctx/toolchain"
  rm -rf "$ctx/toolchain/share/doc"
  cat > "$ctx/Dockerfile" <<EOF
FROM $SLIM
# what the official rust image's buildpack-deps base gives a build: C/C++ compilers, make,
# pkg-config, git, curl, and Python for build scripts
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl git \\
      gcc g++ make libc6-dev pkg-config python3 python3-venv xz-utils \\
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$have_version
COPY toolchain /usr/local/rustup/toolchains/$have_version-x86_64-unknown-linux-gnu
RUN mkdir -p /usr/local/cargo/bin \\
    && for b in /usr/local/rustup/toolchains/*/bin/*; do ln -s "\$b" /usr/local/cargo/bin/; done \\
    && cargo --version && rustc --version
EOF
  echo "base-images: building $RUST_TAG (Debian build tools + rustc $have_version)" >&2
  DOCKER_BUILDKIT=1 "$DOCKER" build -q --network host -t "$RUST_TAG" "$ctx" >/dev/null
  echo "base-images: $RUST_TAG made in $((SECONDS - t0)) s" >&2
}

if have "$SLIM"; then echo "base-images: $SLIM present" >&2; else make_slim; fi
if have "$RUST_TAG"; then echo "base-images: $RUST_TAG present" >&2; else make_rust; fi
