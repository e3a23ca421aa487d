#!/usr/bin/env bash
# Benchmark tresor against restic, rustic and borg; writes docs/BENCHMARKS.md.
#
# Run as root on Debian (bookworm): installs what is missing, builds tresor,
# then hands over to bench.py. Settings (environment):
#   BENCH_RUNS=3              runs per measurement (median reported)
#   BENCH_DATASETS=linux,large  (add pg for PostgreSQL; pg alone: only that part,
#                             merged into the existing results, like bench.py pg;
#                             bucket alone: tresor's bucket source against rclone
#                             sync, bench/bucket.py, printed and in bench/bucket.md)
#   BENCH_BUCKET_OBJECTS=5000 objects in the bucket benchmark
#   BENCH_PG_SCALE=50         pgbench scale of the PostgreSQL database
#   BENCH_TOOLS=tresor,restic,rustic,borg
#   BENCH_QUICK=1             1 run and a 300 MiB large-file set
#   BENCH_LARGE_MB=2500       size of the large-file set in MiB
#   BENCH_OUT=docs/BENCHMARKS.md
#   BENCH_TIMEOUT=3600        seconds before one command is killed
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$BENCH_DIR")
TOOLS_DIR=$BENCH_DIR/.tools
export PATH="$TOOLS_DIR/bin:${HOME:-/root}/.cargo/bin:$PATH"
export BENCH_TOOLS=${BENCH_TOOLS:-tresor,restic,rustic,borg}
export BENCH_DATASETS=${BENCH_DATASETS:-linux,large}
# A relative BENCH_OUT means relative to where the script was started.
export BENCH_OUT=$(realpath -m "${BENCH_OUT:-$REPO_ROOT/docs/BENCHMARKS.md}")

wants_tool() { [[ ",$BENCH_TOOLS," == *",$1,"* ]]; }
wants_dataset() { [[ ",$BENCH_DATASETS," == *",$1,"* ]]; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Debian packages for whatever is missing; apt-get update only if needed.
install_packages() {
    local pkgs=()
    command -v python3 >/dev/null || pkgs+=(python3)
    [[ -x /usr/bin/time ]] || pkgs+=(time)
    if wants_tool restic && ! command -v restic >/dev/null; then pkgs+=(restic); fi
    if wants_tool borg && ! command -v borg >/dev/null; then pkgs+=(borgbackup); fi
    if wants_dataset linux && [[ ! -f /usr/src/linux-source-6.1.tar.xz ]]; then
        pkgs+=(linux-source-6.1)
    fi
    if wants_dataset pg && [[ ! -x ${BENCH_PG_BIN:-/usr/lib/postgresql/15/bin}/pgbench ]]; then
        pkgs+=(postgresql-15)
    fi
    ((${#pkgs[@]})) || return 0
    echo "installing: ${pkgs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
}

# rustic is not packaged in bookworm: build it from crates.io (≈10 min).
install_rustic() {
    wants_tool rustic || return 0
    command -v rustic >/dev/null && return 0
    echo "installing rustic-rs into $TOOLS_DIR (slow) …"
    cargo install rustic-rs --locked --root "$TOOLS_DIR"
}

# b3sum gives the read+hash floor. Debian's package is quickest; else crates.io.
install_b3sum() {
    command -v b3sum >/dev/null && return 0
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq b3sum; then
        return 0
    fi
    cargo install b3sum --locked --root "$TOOLS_DIR"
}

build_tresor() {
    wants_tool tresor || return 0
    echo "building tresor (release) …"
    (cd "$REPO_ROOT" && cargo build --release -p tresor-cli)
    export TRESOR_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/tresor
}

main() {
    if ! command -v cargo >/dev/null && { wants_tool tresor || wants_tool rustic; }; then
        echo "cargo not found: install Rust (rustup) first" >&2
        exit 1
    fi
    install_packages
    install_rustic
    install_b3sum
    build_tresor
    if [[ $BENCH_DATASETS == bucket ]]; then
        bench_bucket
        return
    fi
    python3 "$BENCH_DIR/bench.py" run
}

# The bucket row: the in-process S3 server as a program, Debian's rclone.
bench_bucket() {
    command -v rclone >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone
    (cd "$REPO_ROOT" && cargo build --release -p tresor-testkit --example s3_server)
    local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release
    python3 "$BENCH_DIR/bucket.py" --objects "${BENCH_BUCKET_OBJECTS:-5000}" --tresor "$target/tresor" \
        --server "$target/examples/s3_server" --out "$BENCH_DIR/bucket.md"
}

main "$@"
