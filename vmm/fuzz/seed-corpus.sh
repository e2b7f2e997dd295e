#!/bin/sh
# Writes structured seed inputs (the same generator the fixed-seed unit
# test uses) into corpus/<target>/ for a first fuzzing run.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
cargo run -q -p berth-vmm --example fuzz_seeds -- "$here/corpus"
