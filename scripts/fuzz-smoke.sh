#!/usr/bin/env bash
# Fixed-seed runs of every cargo-fuzz target in host/fuzz (the parsers of untrusted
# input: create bodies, filters, layer and image tars, Dockerfiles, the agent protocol),
# a few minutes in all, build included. Fails when a target crashes; libFuzzer leaves
# the input under host/fuzz/artifacts/<target>/ and prints how to replay it.
#
# Longer campaigns: BERTH_FUZZ_SECONDS=3600 BERTH_FUZZ_RUNS=-1 scripts/fuzz-smoke.sh
# (-1 runs: unbounded), or one target by hand; see SECURITY.md ("Fuzzing").
#
# cargo-fuzz needs nightly flags (-Zsanitizer...); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them. No sanitizer by default (BERTH_FUZZ_SANITIZER=address for one):
# the targets are safe Rust apart from the unpacker's libc calls. Measured on a loaded
# 2-core machine from a clean target dir: 141 s in all without, 240 s with ASan (which
# also makes 3-10x fewer runs in the same 20 s per target).
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${BERTH_TOOLS_DIR:-/var/cache/berth/tools}"
export PATH="$tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  # Cached outside the clone: the build takes minutes.
  cargo install --root "$tools" --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
target_dir="${BERTH_FUZZ_TARGET_DIR:-$PWD/target/fuzz}"
sanitizer="${BERTH_FUZZ_SANITIZER:-none}"
runs="${BERTH_FUZZ_RUNS:-1000000}"
seconds="${BERTH_FUZZ_SECONDS:-20}"
# -a: overflow checks and debug_assert!s stay on in the optimised build.
build_flags=(--fuzz-dir . -s "$sanitizer" -a --target-dir "$target_dir")

cd host/fuzz
t0=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "fuzz-smoke: built in $((SECONDS - t0)) s"

# An assignment, so that a failing `list` stops the script (set -e).
targets=$(cargo fuzz list --fuzz-dir .)
[ -n "$targets" ] || { echo "fuzz-smoke: no fuzz targets found" >&2; exit 1; }
status=0
for t in $targets; do
  # libFuzzer adds what it finds to the first corpus dir: a scratch one, so the
  # committed seeds/ stay as they are.
  scratch="$target_dir/corpus/$t"
  rm -rf "$scratch" && mkdir -p "$scratch"
  t1=$SECONDS
  if cargo fuzz run "${build_flags[@]}" "$t" "$scratch" "seeds/$t" -- \
    -seed=1 -runs="$runs" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -print_final_stats=1 >"$target_dir/$t.log" 2>&1; then
    echo "fuzz-smoke: $t ok in $((SECONDS - t1)) s ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$target_dir/$t.log" | grep -o '[0-9]*$') runs)"
  else
    echo "fuzz-smoke: $t FAILED; the last lines of $target_dir/$t.log:" >&2
    tail -n 40 "$target_dir/$t.log" >&2
    status=1
  fi
done
echo "fuzz-smoke: done in $((SECONDS - t0)) s"
exit $status
