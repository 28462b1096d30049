#!/usr/bin/env bash
# Runs a libFuzzer target and judges its findings.
#   run_fuzzer.sh [--without-isolation] FUZZER WORK_DIR SEED_DIR ARTIFACT_DIR [libFuzzer flags...]
#
# Plain mode (CTest, both targets): libFuzzer runs until its limits (-runs,
# -max_total_time) or the first finding; any finding fails (exit 1). For fuzz_weights,
# libhdf5's own crashes on malformed files happen in H5Reader's child process and are
# refused files, not findings (engine/io/h5.h).
#
# --without-isolation (fuzz_weights, by hand): a look at what the child process absorbs.
# The target runs with ENGINE_H5_ISOLATION=0, so libhdf5 1.10 crashes, leaks and makes
# huge allocations in the fuzzer's own process (docs/reliability.md); it runs in fork
# mode, going on after each finding, and afterwards every artifact is replayed alone and
# its report read: a finding whose first frame outside the sanitizer and libFuzzer
# runtimes is inside libhdf5, and whose memory (for a buffer overflow or use after free)
# was not allocated by our code, is listed as a libhdf5 bug; anything else — a frame of
# the engine first, or our buffer overrun by libhdf5 — fails the run: it is a bug of
# ours that the child would have hidden. An artifact that does not reproduce alone
# (memory that grew over many inputs) is listed and not counted.
set -uo pipefail

tolerate=0
if [ "${1:-}" = "--without-isolation" ]; then
  tolerate=1
  export ENGINE_H5_ISOLATION=0
  shift
fi
if [ $# -lt 4 ]; then
  echo "usage: run_fuzzer.sh [--without-isolation] FUZZER WORK_DIR SEED_DIR ARTIFACT_DIR [flags...]" >&2
  exit 2
fi
fuzzer=$1 work=$2 seeds=$3 artifacts=$4
shift 4
mkdir -p "$work" "$artifacts"
name=$(basename "$fuzzer")

if [ $tolerate -eq 0 ]; then
  "$fuzzer" -artifact_prefix="$artifacts/" -print_final_stats=1 "$@" "$work" "$seeds"
  exit $?
fi

# Fork mode's exit status is that of the last job that found something, so whether the
# run happened at all is read from its log instead. RUN_FUZZER_TRIAGE_ONLY=1 skips the run
# and judges the artifacts already in ARTIFACT_DIR.
[ "${RUN_FUZZER_TRIAGE_ONLY:-0}" = 1 ] || "$fuzzer" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -artifact_prefix="$artifacts/" \
  "$@" "$work" "$seeds" 2>&1 | tee "$artifacts/fuzz.log"
if [ "${RUN_FUZZER_TRIAGE_ONLY:-0}" != 1 ] &&
  { ! grep -qE '^INFO: exiting: ' "$artifacts/fuzz.log" || ! grep -qE '^#[0-9]+: cov' "$artifacts/fuzz.log"; }; then
  echo "run_fuzzer: $name did not run to its end"
  exit 1
fi
grep -sE '^#[0-9]+: cov' "$artifacts/fuzz.log" | tail -1 | sed "s/^/run_fuzzer: $name: last status: /"

# The first stack frame of a report section that is not the sanitizer runtime, libFuzzer,
# libc or the allocator: "libhdf5" when it is inside libhdf5, else the frame itself. The
# runtime's interceptors (strdup, memcpy, ...) are frames of the fuzzer binary without a
# source file, unlike the engine's frames.
runtime_frame="$(basename "$fuzzer")+0x"
first_frame() {
  grep -E '^ +#[0-9]+ 0x' | grep -vF "$runtime_frame" |
    grep -vE '__sanitizer|__asan|__lsan|__ubsan|__interceptor|fuzzer::|libFuzzer|libc\.so|libstdc\+\+|[( ](malloc|calloc|realloc|free|operator new|operator delete)[ (]|__memset|__memcpy|__memmove|RunMallocHooks|MallocHook|<unknown module>' |
    head -1 | { read -r line || true; case "$line" in *libhdf5*) echo libhdf5 ;; *) echo "$line" ;; esac; }
}

ours=0 library=0 flaky=0
shopt -s nullglob
for artifact in "$artifacts"/crash-* "$artifacts"/leak-* "$artifacts"/timeout-* "$artifacts"/oom-*; do
  # A malloc limit well below the RSS limit makes a memory blow-up report the allocation
  # that caused it rather than wherever the RSS watchdog found the process.
  report=$("$fuzzer" -runs=3 -timeout=25 -rss_limit_mb=2048 -malloc_limit_mb=1024 "$artifact" 2>&1)
  if [ $? -eq 0 ]; then
    flaky=$((flaky + 1))
    echo "run_fuzzer: $(basename "$artifact"): does not reproduce alone"
    continue
  fi
  kind=$(printf '%s\n' "$report" | grep -m1 -oE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer|UndefinedBehaviorSanitizer): [A-Za-z -]+|runtime error: .*' || true)
  where=$(printf '%s\n' "$report" | sed -n '/ERROR: /,$p' | sed '/allocated by thread\|freed by thread\|is located in stack of thread/,$d' | first_frame)
  owner=$(printf '%s\n' "$report" | sed -n '/allocated by thread\|is located in stack of thread/,$p' | first_frame)
  if [ "$where" = libhdf5 ] && { [ -z "$owner" ] || [ "$owner" = libhdf5 ]; }; then
    library=$((library + 1))
    echo "run_fuzzer: $(basename "$artifact"): inside libhdf5: $kind"
  else
    ours=$((ours + 1))
    echo "run_fuzzer: $(basename "$artifact"): IN THE ENGINE: $kind"
    echo "  first frame: $where"
    [ -n "$owner" ] && echo "  memory from: $owner"
    printf '%s\n' "$report" | grep -E 'ERROR|SUMMARY|^ +#[0-9]+ ' | head -30 | sed 's/^/  | /'
  fi
done
echo "run_fuzzer: $name: $ours finding(s) in the engine, $library inside libhdf5, $flaky not reproducible alone"
[ $ours -eq 0 ]
