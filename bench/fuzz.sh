#!/usr/bin/env bash
# Fuzzes the readers of untrusted bytes for a fixed time each (issue 26): the model-file reader
# (src/model/torch_file, then the CPnet built from what it accepts), the pickle reader
# (src/pickle, with the numpy region decoder) and the TIFF reader (src/imageio). libFuzzer via
# cargo-fuzz (nightly); not part of CI. Each run starts from a corpus seeded with the project's
# own fixtures and prints, per target: seconds, executions, corpus size, findings (crash,
# timeout and out-of-memory inputs under fuzz/artifacts/<target>/).
#
#   bench/fuzz.sh [SECONDS_PER_TARGET=300] [TARGET...]
#
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`. A finding is replayed with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-300}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(model_file pickle tiff)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz on nightly is needed: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

# the data.pkl of a torch.save file, after a prefix (python escapes)
data_pkl() {
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
n = next(n for n in z.namelist() if n.endswith("data.pkl"))
sys.stdout.buffer.write(sys.argv[2].encode().decode("unicode_escape").encode("latin-1") + z.read(n))' "$1" "$2"
}

# seeds: the fixtures each reader is meant to read
seed() {
    local dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case $1 in
        tiff) cp tests/fixtures/tiff_layouts/*.tif "$dir"/ ;;
        pickle)
            cp tests/fixtures/girder/*.pickle5 "$dir"/
            for pt in tests/fixtures/cpsam/*.pth; do
                data_pkl "$pt" '' >"$dir/$(basename "$pt").data.pkl"
            done ;;
        model_file)
            # inputs are a mode byte (even: the bytes are the file; odd: the bytes are the data.pkl of
            # a well-formed archive) and the bytes
            local pt
            for pt in tests/fixtures/cpsam/*.pth; do
                { printf '\0'; cat "$pt"; } >"$dir/raw_$(basename "$pt")"
                data_pkl "$pt" '\x01' >"$dir/pkl_$(basename "$pt")"
            done
            # a tiny CPnet file, made by the project's binary (built if missing)
            if [ ! -f "$dir/raw_tiny_cpnet.pt" ]; then
                bin=target/release/cellpose-train-worker
                [ -x "$bin" ] || cargo build --release --quiet
                if "$bin" model init --nchan 2 --nbase 4,8 --out "$dir/tiny_cpnet.pt" >/dev/null 2>&1; then
                    { printf '\0'; cat "$dir/tiny_cpnet.pt"; } >"$dir/raw_tiny_cpnet.pt"
                    data_pkl "$dir/tiny_cpnet.pt" '\x01' >"$dir/pkl_tiny_cpnet"
                    rm "$dir/tiny_cpnet.pt"
                else
                    echo "(no CPnet seed: the release binary did not run)" >&2
                fi
            fi ;;
    esac
}
for t in "${TARGETS[@]}"; do seed "$t"; done

# libtorch is not built with the sanitizer: leaks and its allocator pairs are not ours to judge
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0}
# the main crate's rpath to libtorch (build.rs) is not passed on to another package's binaries
export LD_LIBRARY_PATH="$ROOT/.venv/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
failed=0
cd fuzz
# the default build: optimised, with debug assertions and overflow checks, AddressSanitizer
cargo +nightly fuzz build 2>&1 | tail -3 || true
count() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }
printf '%-11s %8s %12s %8s %9s\n' target seconds executions corpus findings
for t in "${TARGETS[@]}"; do
    log=$ROOT/fuzz/$t.log
    before=$(count "artifacts/$t")
    start=$(date +%s)
    # inputs up to 64 KB; one allocation over 3 GB (above every stated limit) is a finding
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 \
        -malloc_limit_mb=3072 -rss_limit_mb=6144 -timeout=30 -print_final_stats=1 >"$log" 2>&1 || true
    secs=$(($(date +%s) - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    after=$(count "artifacts/$t")
    if [ -z "$execs" ]; then
        printf '%-11s did not run: see %s\n' "$t" "$log"
        failed=1
        continue
    fi
    printf '%-11s %8s %12s %8s %9s\n' "$t" "$secs" "$execs" "$(count "corpus/$t")" "$((after - before))"
done
echo "logs: fuzz/<target>.log; findings: fuzz/artifacts/<target>/"
exit $failed
