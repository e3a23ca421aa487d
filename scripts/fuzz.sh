#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets) for SECONDS each, one at a time,
# starting from its committed seed corpus in fuzz/corpus/TARGET. New inputs
# that reach new code go to fuzz/target/corpus/TARGET (not committed; merge
# the useful ones by hand), crashes to fuzz/artifacts/TARGET. A summary line
# per target (executions, seconds it ran, crashes) goes to stdout and to
# fuzz/target/fuzz-summary.tsv.
#
#   scripts/fuzz.sh SECONDS [TARGET…]
#
# Seeds: `cargo test -p tresor-cli --test cli -- fuzz_corpus::regenerate
# --ignored` rebuilds fuzz/corpus/*/seed-* from real objects and servers.
#
# cargo-fuzz wants nightly flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. No sanitizer: the code is safe Rust (the C inside,
# zstd, is fuzzed upstream), and uninstrumented runs are several times faster.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET…]}
shift
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
# Built once, then the binaries run directly: `cargo fuzz run` would
# rebuild whenever a source file changed meanwhile. FUZZ_BUILD=0 runs the
# binaries built before.
[ "${FUZZ_BUILD:-1}" = 0 ] || cargo fuzz build --sanitizer none
bins=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
mkdir -p fuzz/target/corpus fuzz/artifacts
summary=fuzz/target/fuzz-summary.tsv
for t in "${targets[@]}"; do
  work=fuzz/target/corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  log=fuzz/target/fuzz-$t.log
  status=0
  began=$(date +%s)
  # Crashes of this run: artifacts of earlier runs stay in the directory.
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  # -rss_limit_mb: a parser that allocates without bound is a finding.
  "$bins/$t" "$work" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t/" \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  crashes=$(($(find "fuzz/artifacts/$t" -type f | wc -l) - before))
  printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "${execs:-0}" "$(($(date +%s) - began))" "$crashes" | tee -a "$summary"
  if [ "$status" -ne 0 ]; then
    echo "$t: the fuzzer stopped with status $status; see $log and fuzz/artifacts/$t" >&2
  fi
done
