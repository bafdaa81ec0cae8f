#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each and prints the figures (SPEC.md "Fuzzing").
#   fuzz/run.sh [seconds per target, default 60] [target ...]
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). The targets are built once
# (release with debug assertions and overflow checks, cargo-fuzz's default), then each runs from
# its committed seeds (fuzz/corpus/<target>) plus a working corpus kept in fuzz/target/corpus.
# A crash, panic, leak, timeout (10 s for one input) or out-of-memory (2 GiB) stops that target,
# leaves the input in fuzz/artifacts/<target>/ and makes the script exit 1 after the others ran.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=(jws_token signed_note statement journal blob batch_tar export_verify manifest)
[ $# -eq 0 ] || targets=("$@")

# The token target opens a vault in a temporary folder: keep them all in one, removed at exit.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export TMPDIR=$tmp

# FUZZ_TARGET_DIR keeps the (slow, instrumented) build outside the repository, e.g. in a cache
# folder that survives between CI runs; FUZZ_BUILD_TIMEOUT (seconds) bounds the build, after
# which the script gives up with exit 3 (nothing was fuzzed).
dir_args=()
[ -z "${FUZZ_TARGET_DIR:-}" ] || dir_args=(--target-dir "$FUZZ_TARGET_DIR")
echo "== fuzz: building the targets"
build_start=$(date +%s)
set +e
timeout "${FUZZ_BUILD_TIMEOUT:-0}" nice cargo +nightly fuzz build "${dir_args[@]}"
rc=$?
set -e
if [ $rc -eq 124 ]; then
  echo "== fuzz: the build took more than ${FUZZ_BUILD_TIMEOUT} s; nothing fuzzed"
  exit 3
elif [ $rc -ne 0 ]; then
  exit $rc
fi
echo "built in $(($(date +%s) - build_start)) s"

failed=()
printf '%-14s %10s %10s %8s %8s %6s\n' target execs exec/s cov ft secs >"$tmp/table"
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t" "artifacts/$t" "corpus/$t"
  max_len=4096
  case $t in batch_tar | export_verify | blob) max_len=65536 ;; esac
  log="$tmp/$t.log"
  start=$(date +%s)
  if nice cargo +nightly fuzz run "${dir_args[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=$max_len -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
      -print_final_stats=1 -close_fd_mask=3 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -n 20 || true
  fi
  took=$(($(date +%s) - start))
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  rate=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo 0)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo 0)
  printf '%-14s %10s %10s %8s %8s %6s %s\n' "$t" "$runs" "$rate" "$cov" "$ft" "$took" "$status" | tee -a "$tmp/table"
done
echo "== fuzz figures (${secs}s per target)"
cat "$tmp/table"
if [ ${#failed[@]} -gt 0 ]; then
  echo "== fuzz FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "== fuzz passed"
