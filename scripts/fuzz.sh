#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of hostile input (issue 12): builds the cargo-fuzz
# targets of fuzz/ and runs each for SECONDS (default 60), from the seeds in fuzz/seeds/<target>
# plus the corpus grown by earlier runs in fuzz/corpus/<target> (git-ignored). Prints, per
# target, the executions, the coverage and whether it crashed; exits 1 if any target crashed
# (the input is in fuzz/artifacts/<target>/: make it a regression test, then fix the parser).
#
#   scripts/fuzz.sh [SECONDS]        e.g. scripts/fuzz.sh 120
#   FUZZ_TARGETS="event_log templates" scripts/fuzz.sh 30
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). On the stable toolchain,
# RUSTC_BOOTSTRAP=1 lets rustc accept the -Z flags cargo-fuzz passes (sanitizer and
# coverage instrumentation); the address sanitizer works with stable's runtime. Set
# FUZZ_SANITIZER=none where it does not. Not part of .ci/run: CI time is tight.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
targets=${FUZZ_TARGETS:-event_log catalogue model_artifact templates}
sanitizer=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1 CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 2; }
cargo fuzz build --sanitizer "$sanitizer"

# The binaries are run directly rather than through `cargo fuzz run`, which would ask cargo
# again for each target (and rebuild whatever build scripts mark as stale).
bin=fuzz/target/x86_64-unknown-linux-gnu/release
crashed=0
summary=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/last-run.log"
  before=$(find "fuzz/artifacts/$t" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' | wc -l)
  echo "== $t: ${seconds} s"
  # -rss_limit_mb/-malloc_limit_mb: a declared length trusted before it is checked shows as
  # an out-of-memory crash instead of passing unnoticed; -timeout: a hang is a crash too.
  # -print_final_stats: the execution count read below.
  set +e
  "$bin/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" "fuzz/corpus/$t" "fuzz/seeds/$t" >"$log" 2>&1
  rc=$?
  set -e
  after=$(find "fuzz/artifacts/$t" -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -1)
  if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
    crashed=1
    verdict="CRASH (exit $rc; see $log and fuzz/artifacts/$t/)"
    grep -E -m3 'panicked at|SUMMARY|ERROR: libFuzzer' "$log" | sed 's/^/   /' || true
  else
    verdict="no crash"
  fi
  summary+=("$(printf '%-15s %12s execs  %-40s %s' "$t" "${execs:-?}" "${cov:-?}" "$verdict")")
done
echo
echo "fuzz summary (${seconds} s per target, sanitizer $sanitizer):"
printf '  %s\n' "${summary[@]}"
exit "$crashed"
