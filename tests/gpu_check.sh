#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU and the CUDA toolkit:
#   card        nvidia-smi: name, driver, memory, compute capability
#   build       configure for this card (its compute capability, else CMake's "native")
#               and build the CUDA tests, the tools, benchmarks and alexnet_throughput into
#               build-gpu
#               (skipped with --build-dir: a build made elsewhere and carried over; with
#               --bundle: checks that the bundle's binaries find all their libraries)
#   tests       every CUDA test binary (bin/test_cuda*, test_cuda_tools running the
#               tools beside it); fails on any failure and on any SKIPPED test, since on a
#               GPU machine nothing may skip
#   memcheck    compute-sanitizer --tool memcheck over the CUDA tests, ENGINE_CUDA_CACHING=0
#               so every allocation is a real cudaMalloc the tool can see (by default all
#               but the launch-heavy CudaGradcheck tests, whose kernels the CudaTyped tests
#               run too, and the host-run CudaKernelsOnHost ones; and SqueezeNet float32 of
#               the whole networks)
#   racecheck   compute-sanitizer --tool racecheck over the tests of our own kernels
#   bench       bin/bench_cuda_ops (ceilings, GEMM, convolution, memory-bound kernels)
#               and bin/cudnn_conv_algos (every cuDNN convolution algorithm's time and
#               float32 error at AlexNet's shapes)
#   throughput  bin/alexnet_throughput --device cuda: forward and train at batch 64,
#               saliency at batch 1
#   pytorch     bench/compare_pytorch.sh 5 cuda: PyTorch's AlexNet on the same card beside
#               ours, when python3 ($PYTHON, else Debian's, else the one on PATH) has torch
#               with CUDA
# Writes one Markdown report (rewritten after every stage, so a run cut short still
# leaves one) and, when $OUT is set, copies it and an archive of the stage logs there. Each stage runs
# under `timeout`; a failing stage is recorded and the next one runs. Exits 1 if any
# stage failed.
#
#   tests/gpu_check.sh [--build-dir DIR | --bundle DIR] [--out FILE] [--stages a,b,...]
#                      [--budget SECONDS] [--jobs N] [--tail LINES]
#   --build-dir DIR   reuse DIR (must hold bin/test_cuda); no configure, no build. DIR and
#                     FILE below, when relative, are taken from the repository root
#   --bundle DIR      run the binaries of DIR/bundle.tar.xz (made by tests/gpu_bundle.sh on
#                     a machine that can build the project); no configure, no build. They
#                     run with LD_LIBRARY_PATH set to the bundle's lib/ (and its lib/gcc
#                     where this machine's libstdc++ is too old), then the CUDA libraries
#                     found here (/usr/local/cuda/lib64, its targets/x86_64-linux/lib,
#                     and the lib/ folders of python3's nvidia-* wheels), then whatever
#                     LD_LIBRARY_PATH held; the report says where each CUDA library came from
#   --out FILE        the report (default gpu_report.md); stage logs go to FILE's name + _logs/
#   --stages LIST     run only these stages (default: all, in the order above)
#   --budget SECONDS  overall time limit: each stage's limit is cut to what is left, and
#                     stages that would get less than a minute are skipped
# Stage limits (seconds) can be changed with GPU_CHECK_LIMIT_<STAGE>=N, e.g.
# GPU_CHECK_LIMIT_MEMCHECK=3600; the sanitizers' gtest filters with
# GPU_CHECK_MEMCHECK_FILTER (e.g. '*' for everything), GPU_CHECK_MEMCHECK_NETS_FILTER and
# GPU_CHECK_RACECHECK_FILTER.
# On a GPU machine that cannot build the project, with a bundle made where it can:
#   tests/gpu_check.sh --bundle gpu-bundle --budget 550 --out gpu_report.md
# Where one command may run only so long, split the check and reuse the build:
#   tests/gpu_check.sh --stages card,build,tests --budget 550
#   tests/gpu_check.sh --build-dir build-gpu --stages memcheck,racecheck --budget 550 --out gpu_report_2.md
#   tests/gpu_check.sh --build-dir build-gpu --stages bench,throughput,pytorch --budget 550 --out gpu_report_3.md
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# ---- options ------------------------------------------------------------------------------
build_dir=""
bundle_dir=""
out_file="gpu_report.md"
stages="card,build,tests,memcheck,racecheck,bench,throughput,pytorch"
budget=0
jobs=$(nproc 2>/dev/null || echo 4)
tail_lines=40
while (($#)); do
  case "$1" in
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift 2 ;;
    --bundle) bundle_dir=${2:?--bundle needs a directory}; shift 2 ;;
    --out) out_file=${2:?--out needs a file}; shift 2 ;;
    --stages) stages=${2:?--stages needs a list}; shift 2 ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --tail) tail_lines=${2:?--tail needs a number}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

prebuilt=0
if [ -n "$build_dir" ] && [ -n "$bundle_dir" ]; then
  echo "gpu_check: --build-dir and --bundle exclude each other" >&2
  exit 2
fi
if [ -n "$bundle_dir" ]; then
  prebuilt=1
  case "$bundle_dir" in /*) ;; *) bundle_dir="$root/$bundle_dir" ;; esac
  [ -f "$bundle_dir/bundle.tar.xz" ] || { echo "gpu_check: --bundle: no $bundle_dir/bundle.tar.xz (tests/gpu_bundle.sh makes it)" >&2; exit 2; }
  # Unpacked for this run only; its bin/ is the build's bin/.
  bundle_tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_bundle.XXXXXX")
  trap 'rm -rf "$bundle_tmp"' EXIT
  if ! tar -C "$bundle_tmp" -xJf "$bundle_dir/bundle.tar.xz" 2>/dev/null; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$bundle_dir/bundle.tar.xz" "$bundle_tmp" \
      || { echo "gpu_check: --bundle: cannot unpack $bundle_dir/bundle.tar.xz" >&2; exit 2; }
  fi
  [ -x "$bundle_tmp/bin/test_cuda" ] || { echo "gpu_check: --bundle: the bundle holds no bin/test_cuda" >&2; exit 2; }
  build_dir=$bundle_tmp
elif [ -n "$build_dir" ]; then
  prebuilt=1
  build_dir=$(cd "$build_dir" 2>/dev/null && pwd) || { echo "gpu_check: --build-dir: no such directory" >&2; exit 2; }
else
  build_dir="$root/build-gpu"
fi
case "$out_file" in /*) ;; *) out_file="$root/$out_file" ;; esac
log_dir="${out_file%.md}_logs"
# The device tool returns at most 8 files from $OUT: keep the logs outside it and hand
# back one archive of them beside the report.
if [ -n "${OUT:-}" ]; then
  case "$log_dir" in "$OUT"/*) log_dir="$root/$(basename "$log_dir")" ;; esac
fi
mkdir -p "$log_dir" "$(dirname "$out_file")"

# The toolkit's tools, wherever this machine keeps them.
for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
  if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then
    case ":$PATH:" in *":$d/bin:"*) ;; *) PATH="$PATH:$d/bin" ;; esac
  fi
done
export PATH
nvcc_path=$(command -v nvcc || true)
sanitizer=$(command -v compute-sanitizer || true)
if [ -z "$sanitizer" ]; then
  for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
           /usr/local/cuda-*/bin/compute-sanitizer; do
    if [ -x "$c" ]; then sanitizer=$c; break; fi
  done
fi

start_epoch=$(date +%s)
all_stages=(card build tests memcheck racecheck bench throughput pytorch)
declare -A status secs note
for s in "${all_stages[@]}"; do status[$s]="not run"; secs[$s]=""; note[$s]=""; done

wanted() { case ",$stages," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

default_limit() {
  case "$1" in
    card) echo 60 ;; build) echo 1800 ;; tests) echo 1200 ;; memcheck) echo 2400 ;;
    racecheck) echo 1200 ;; bench) echo 900 ;; throughput) echo 600 ;; pytorch) echo 600 ;;
  esac
}

# The limit for a stage: its default (or GPU_CHECK_LIMIT_<STAGE>), cut to the budget left.
stage_limit() {
  local name=$1 var limit left
  var="GPU_CHECK_LIMIT_${name^^}"
  limit=${!var:-$(default_limit "$name")}
  if ((budget > 0)); then
    left=$((budget - ($(date +%s) - start_epoch) - 15))
    ((left < limit)) && limit=$left
  fi
  echo "$limit"
}

# ---- facts about the machine ------------------------------------------------------------------
card_name="unknown"; card_driver="unknown"; card_memory="unknown"; card_cc=""
no_gpu_reason="nvidia-smi not found"
if command -v nvidia-smi >/dev/null 2>&1; then
  line=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
  if [ -n "$line" ]; then
    IFS=',' read -r card_name card_driver card_memory <<<"$line"
    card_name=$(echo "$card_name" | xargs); card_driver=$(echo "$card_driver" | xargs)
    card_memory=$(echo "$card_memory" | xargs)
  fi
  card_cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | xargs || true)
  no_gpu_reason="nvidia-smi lists no GPU"
fi
driver_cuda=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n 1 | awk '{print $3}' || true)
toolkit_cuda="not found"
[ -n "$nvcc_path" ] && toolkit_cuda=$("$nvcc_path" --version | grep -o 'release [0-9.]*' | awk '{print $2}')
cudnn_version="unknown"
runtime_libs=""  # as test_cuda reports them (the tests stage)
for h in "$(dirname "${nvcc_path:-/usr/local/cuda/bin/nvcc}")/../include/cudnn_version.h" /usr/include/cudnn_version.h \
         /usr/include/x86_64-linux-gnu/cudnn_version_v*.h; do
  if [ -f "$h" ]; then
    cudnn_version=$(awk '/#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) /{v=v (v==""?"":".") $3} END{print v}' "$h")
    break
  fi
done
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown")
if [ "$commit" != "unknown" ] && [ -n "$(git status --porcelain 2>/dev/null | head -n 1)" ]; then
  commit="$commit (with uncommitted changes)"
fi

# ---- the report ---------------------------------------------------------------------------------
fence() { printf '```\n'; cat; printf '```\n'; }

write_report() {
  local tmp="$out_file.tmp.$$" s
  {
    echo "# GPU check"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC') (started $(date -u -d "@$start_epoch" '+%H:%M:%S UTC' 2>/dev/null || echo "$start_epoch"))"
    echo "- Host: $(hostname 2>/dev/null || echo unknown)"
    echo "- Card: $card_name, ${card_memory}, compute capability ${card_cc:-unknown}"
    echo "- Driver: $card_driver (supports CUDA ${driver_cuda:-unknown})"
    echo "- CUDA toolkit: $toolkit_cuda (${nvcc_path:-no nvcc}); cuDNN $cudnn_version (its header)"
    [ -n "$runtime_libs" ] && echo "- Loaded at run time (test_cuda): $runtime_libs"
    echo "- compute-sanitizer: ${sanitizer:-not found}"
    echo "- Source: $root at $commit"
    if [ -n "$bundle_dir" ]; then
      echo "- Build: the bundle $bundle_dir/bundle.tar.xz (commit $bundle_commit, packed $bundle_date; not rebuilt here)"
    elif ((prebuilt)); then
      echo "- Build: $build_dir (carried over; not rebuilt here)"
    else
      echo "- Build: $build_dir"
    fi
    echo "- Stage logs: $log_dir"
    echo
    echo "| stage | result | seconds | note |"
    echo "| --- | --- | ---: | --- |"
    for s in "${all_stages[@]}"; do
      wanted "$s" || continue
      echo "| $s | ${status[$s]} | ${secs[$s]} | ${note[$s]} |"
    done
    echo
    if [ -s "$log_dir/bundle.md" ]; then
      echo "## Bundle"
      echo
      cat "$log_dir/bundle.md"
      echo
    fi
    for s in "${all_stages[@]}"; do
      wanted "$s" || continue
      [ "${status[$s]}" = "not run" ] && continue
      echo "## $s: ${status[$s]}"
      echo
      [ -n "${note[$s]}" ] && { echo "${note[$s]}"; echo; }
      [ -s "$log_dir/$s.md" ] && { cat "$log_dir/$s.md"; echo; }
      if [ -s "$log_dir/$s.log" ]; then
        echo "Last $tail_lines lines of \`$s.log\`:"
        echo
        tail -n "$tail_lines" "$log_dir/$s.log" | fence
        echo
      fi
    done
  } >"$tmp"
  mv "$tmp" "$out_file"
  if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    [ "$(dirname "$out_file")" -ef "$OUT" ] || cp "$out_file" "$OUT/" 2>/dev/null || true
    tar czf "$OUT/$(basename "$log_dir").tar.gz" -C "$(dirname "$log_dir")" "$(basename "$log_dir")" 2>/dev/null || true
  fi
}

# run_stage NAME FUNCTION: runs the stage's function (its output to NAME.log) under the
# stage's time limit, records PASS/FAIL and the time taken, rewrites the report.
run_stage() {
  local name=$1 fn=$2 limit t0 rc
  wanted "$name" || return 0
  limit=$(stage_limit "$name")
  if ((limit < 60)); then
    status[$name]="SKIP"; note[$name]="out of time budget (--budget $budget)"
    write_report
    return 0
  fi
  status[$name]="RUNNING"; note[$name]="limit ${limit} s"
  : >"$log_dir/$name.log"; : >"$log_dir/$name.md"
  write_report
  echo "== gpu_check: $name (limit ${limit} s)" >&2
  current_stage=$name
  t0=$(date +%s)
  STAGE_DEADLINE=$((t0 + limit))
  if "$fn" >>"$log_dir/$name.log" 2>&1; then rc=0; else rc=$?; fi
  secs[$name]=$(($(date +%s) - t0))
  case $rc in
    0) status[$name]="PASS" ;;
    3) status[$name]="SKIP" ;;
    124|137) status[$name]="FAIL"; note[$name]="timed out after ${limit} s. ${note[$name]}" ;;
    *) status[$name]="FAIL" ;;
  esac
  [ "${note[$name]}" = "limit ${limit} s" ] && note[$name]=""
  current_stage=""
  echo "== gpu_check: $name ${status[$name]} (${secs[$name]} s)" >&2
  write_report
}

# Killed from outside (a lease running out): the stage in progress is recorded as killed.
current_stage=""
on_signal() {
  if [ -n "$child_pid" ]; then kill -TERM "$child_pid" 2>/dev/null || true; fi
  if [ -n "$current_stage" ]; then
    status[$current_stage]="FAIL"
    note[$current_stage]="killed by a signal after $(($(date +%s) - start_epoch)) s of the check"
  fi
  write_report
  exit 1
}
trap on_signal TERM INT HUP

# Runs one command of a stage under `timeout`, with what is left of the stage's limit.
# The command runs in the background and is waited for, so that a signal to this script
# is handled at once (on_signal stops the command) rather than after the command ends.
STAGE_DEADLINE=0
child_pid=""
limited() {
  local left=$((STAGE_DEADLINE - $(date +%s))) rc=0
  if ((left <= 0)); then
    echo "gpu_check: the stage's time limit is used up before: $*"
    return 124
  fi
  timeout --kill-after=30 "$left" "$@" &
  child_pid=$!
  wait "$child_pid" || rc=$?
  child_pid=""
  return "$rc"
}

# ---- stages -----------------------------------------------------------------------------------
stage_card() {
  if ! command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi not found: no NVIDIA driver on this machine"
    note[card]="nvidia-smi not found: no GPU check is possible here"
    return 1
  fi
  limited nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || return 1
  limited nvidia-smi --query-gpu=compute_cap --format=csv || true
  limited nvidia-smi || return 1
  [ "$card_name" != "unknown" ] || { echo "nvidia-smi lists no GPU"; return 1; }
}

stage_build() {
  if [ -n "$bundle_dir" ]; then
    cat "$log_dir/ldd.txt"
    if ((bundle_ok)); then
      note[build]="bundle: configure and build skipped; every library its binaries load was found"
      return 0
    fi
    bundle_links
    return 1
  fi
  if ((prebuilt)); then
    note[build]="prebuilt $build_dir: configure and build skipped"
    return 3
  fi
  [ -n "$nvcc_path" ] || { echo "nvcc not found (looked on PATH and in /usr/local/cuda*/bin)"; return 1; }
  local arch=native
  if [ -n "$card_cc" ]; then
    arch=${card_cc//./}
  elif ! printf '3.24\n%s\n' "$(cmake --version | awk 'NR==1{print $3}')" | sort -V -C; then
    arch="80;90"  # CMake before 3.24 has no "native": the project's defaults (A100, H100/H200)
  fi
  note[build]="CMAKE_CUDA_ARCHITECTURES=$arch"
  limited cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc_path" \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DENGINE_WITH_CUDA=ON -DENGINE_BUILD_TESTS=ON -DENGINE_BUILD_BENCH=ON \
    | tee "$log_dir/configure.log" || { echo "configure failed"; return 1; }
  if ! grep -q "CUDA backend: ON" "$log_dir/configure.log"; then
    echo "configured without the CUDA backend (see configure.log)"
    return 1
  fi
  limited cmake --build "$build_dir" -j"$jobs" --target test_cuda test_cuda_nets test_cuda_tools predict saliency \
    finetune bench_cuda_ops cudnn_conv_algos alexnet_throughput
}

# The CUDA test binaries of the build.
test_binaries() {
  local b
  for b in "$build_dir"/bin/test_cuda*; do [ -x "$b" ] && echo "$b"; done
}

stage_tests() {
  local bins b rc=0 skipped=0 summary="" not_started=""
  bundle_links || return 1
  bins=$(test_binaries)
  [ -n "$bins" ] || { echo "no test_cuda* binaries in $build_dir/bin"; return 1; }
  for b in $bins; do
    echo "---- $(basename "$b")"
    if limited env -u GTEST_ALSO_RUN_DISABLED_TESTS -u GTEST_FILTER -u ENGINE_CUDA_CACHING -u GTEST_OUTPUT \
        "${ld_env[@]}" "$b" --gtest_brief=1 --gtest_output="xml:$log_dir/tests-$(basename "$b").xml" >"$log_dir/tests-$(basename "$b").log" 2>&1; then
      :
    else
      rc=1
    fi
    cat "$log_dir/tests-$(basename "$b").log"
    if [ -z "$runtime_libs" ]; then
      runtime_libs=$(sed -n 's/^libraries at run time: //p' "$log_dir/tests-$(basename "$b").log" | head -n 1)
    fi
    if ! grep -qE '^\[==========\] [0-9]+ tests? from .* ran\.' "$log_dir/tests-$(basename "$b").log"; then
      not_started+=" $(basename "$b")"
    fi
    local n_pass n_skip n_fail
    n_pass=$(grep -oE '^\[  PASSED  \] [0-9]+' "$log_dir/tests-$(basename "$b").log" | awk '{print $4}' | tail -n 1 || true)
    n_skip=$(grep -oE '^\[  SKIPPED \] [0-9]+ test' "$log_dir/tests-$(basename "$b").log" | awk '{print $4}' | tail -n 1 || true)
    n_fail=$(grep -oE '^ *[0-9]+ FAILED TEST' "$log_dir/tests-$(basename "$b").log" | awk '{print $1}' | tail -n 1 || true)
    summary+="| $(basename "$b") | ${n_pass:-0} | ${n_skip:-0} | ${n_fail:-0} |"$'\n'
    if [ -n "$n_skip" ] && [ "$n_skip" != "0" ]; then skipped=1; fi
  done
  {
    echo "| binary | passed | skipped | failed |"
    echo "| --- | ---: | ---: | ---: |"
    printf '%s' "$summary"
  } >"$log_dir/tests.md"
  if ((skipped)); then
    echo "FAIL: tests were SKIPPED; on a machine with a GPU every test must run. Skipped:"
    # gtest's XML report: <testcase name="..." ... result="skipped" ... classname="...">
    grep -h 'result="skipped"' "$log_dir"/tests-*.xml 2>/dev/null \
      | sed -E 's/.*testcase name="([^"]*)".*classname="([^"]*)".*/  \2.\1/' || true
    if [ "$card_name" = "unknown" ]; then
      note[tests]="no GPU here ($no_gpu_reason): the binaries ran and skipped their GPU tests; a GPU machine must run every test"
    else
      note[tests]="tests SKIPPED: a GPU machine must run every test"
    fi
    rc=1
  fi
  if [ -n "$not_started" ]; then
    echo "FAIL: no gtest summary (did not start, or stopped early) from:$not_started"
    note[tests]="no gtest summary from:$not_started. ${note[tests]}"
    rc=1
  fi
  return $rc
}

# sanitize TOOL BINARY FILTER: compute-sanitizer with the engine's cache off.
sanitize() {
  local tool=$1 bin=$2 filter=$3
  echo "---- compute-sanitizer --tool $tool $(basename "$bin") --gtest_filter=$filter"
  limited env -u GTEST_ALSO_RUN_DISABLED_TESTS -u GTEST_FILTER ENGINE_CUDA_CACHING=0 "${ld_env[@]}" \
    "$sanitizer" --tool "$tool" --error-exitcode 99 --print-limit 100 \
    "$bin" --gtest_brief=1 --gtest_filter="$filter"
}

stage_memcheck() {
  bundle_links || return 1
  [ -n "$sanitizer" ] || { echo "compute-sanitizer not found"; return 1; }
  [ -x "$build_dir/bin/test_cuda" ] || { echo "no $build_dir/bin/test_cuda"; return 1; }
  local rc=0
  # test_cuda but its central-difference checks (thousands of tiny launches each, on the
  # kernels the CudaTyped tests also run) and the kernels' code run on host threads (no
  # device work); of the whole networks, SqueezeNet in float32.
  sanitize memcheck "$build_dir/bin/test_cuda" "${GPU_CHECK_MEMCHECK_FILTER:--CudaGradcheck.*:CudaKernelsOnHost.*}" || rc=1
  if [ -x "$build_dir/bin/test_cuda_nets" ]; then
    sanitize memcheck "$build_dir/bin/test_cuda_nets" "${GPU_CHECK_MEMCHECK_NETS_FILTER:-*SqueezeNet*float32*}" || rc=1
  fi
  return $rc
}

stage_racecheck() {
  bundle_links || return 1
  [ -n "$sanitizer" ] || { echo "compute-sanitizer not found"; return 1; }
  [ -x "$build_dir/bin/test_cuda" ] || { echo "no $build_dir/bin/test_cuda"; return 1; }
  # Our kernels that share memory between threads: the tiled GEMM, im2col/col2im, the
  # block reductions, softmax and cross-entropy, pooling, and the ops built on them.
  local filter="Dtypes/CudaKernels.GemmTiled*:Dtypes/CudaKernels.Im2col*:Dtypes/CudaKernels.Col2im*"
  filter+=":Dtypes/CudaKernels.DropoutMask*:Dtypes/CudaTyped.SumAndMean*:Dtypes/CudaTyped.AbsMax*"
  filter+=":Dtypes/CudaTyped.Softmax*:Dtypes/CudaTyped.CrossEntropy*:Dtypes/CudaTyped.MaxPool2d*"
  filter+=":Dtypes/CudaTyped.AdaptiveAvgPool2d*:Dtypes/CudaTyped.Cat*:Dtypes/CudaTyped.Linear*"
  sanitize racecheck "$build_dir/bin/test_cuda" "${GPU_CHECK_RACECHECK_FILTER:-$filter}"
}

stage_bench() {
  local bin="$build_dir/bin/bench_cuda_ops" rc=0
  bundle_links || return 1
  [ -x "$bin" ] || { echo "no $bin"; return 1; }
  limited env "${ld_env[@]}" "$bin" --benchmark_counters_tabular=true --benchmark_out="$log_dir/bench_cuda_ops.json" \
    --benchmark_out_format=json || rc=1
  if command -v python3 >/dev/null && [ -s "$log_dir/bench_cuda_ops.json" ]; then
    python3 - "$log_dir/bench_cuda_ops.json" >"$log_dir/bench.md" <<'EOF' || true
import json, sys
d = json.load(open(sys.argv[1]))
print("Device: %s\n" % d.get("context", {}).get("cuda_device", "unknown"))
cols = ["GFLOP/s", "GB/s", "frac_of_copy", "frac_of_same_copy", "frac_of_cublas", "frac_of_cudnn"]
print("| row | time | " + " | ".join(cols) + " |")
print("| --- | ---: |" + " ---: |" * len(cols))
for b in d.get("benchmarks", []):
    name = b["name"].replace("/manual_time", "")
    if b.get("error_occurred"):
        print("| %s | error: %s |%s" % (name, b.get("error_message", ""), " |" * len(cols)))
        continue
    vals = ["%.3g" % b[c] if c in b else "" for c in cols]
    print("| %s | %.4g %s | %s |" % (name, b["real_time"], b["time_unit"], " | ".join(vals)))
EOF
  fi
  if grep -q "ERROR OCCURRED" "$log_dir/bench.log"; then
    echo "FAIL: some rows did not run (ERROR OCCURRED above)"
    rc=1
  fi
  # Every cuDNN convolution algorithm: time and float32 error against float64 (builds
  # and bundles from before it have no such binary).
  local algos="$build_dir/bin/cudnn_conv_algos"
  if [ -x "$algos" ]; then
    echo "---- cudnn_conv_algos --batch 64"
    if limited env "${ld_env[@]}" "$algos" --batch 64 >"$log_dir/cudnn_conv_algos.md" 2>&1; then
      {
        echo
        echo "cuDNN's convolution algorithms (\`cudnn_conv_algos --batch 64\`):"
        echo
        cat "$log_dir/cudnn_conv_algos.md"
      } >>"$log_dir/bench.md"
    else
      echo "FAIL: cudnn_conv_algos"
      rc=1
    fi
    cat "$log_dir/cudnn_conv_algos.md"
  fi
  return $rc
}

# images/s from alexnet_throughput or pytorch_throughput.py (their last line).
rate_of() { grep -E '^images/s:' "$1" | tail -n 1 | awk '{print $2}'; }

throughput_cases=("forward 64" "train 64" "saliency 1")

stage_throughput() {
  local bin="$build_dir/bin/alexnet_throughput" rc=0 c mode batch iters log
  bundle_links || return 1
  [ -x "$bin" ] || { echo "no $bin"; return 1; }
  {
    echo "| case | ours on cuda (images/s) |"
    echo "| --- | ---: |"
  } >"$log_dir/throughput.md"
  for c in "${throughput_cases[@]}"; do
    read -r mode batch <<<"$c"
    iters=10
    [ "$batch" -eq 1 ] && iters=40
    log="$log_dir/throughput-$mode-$batch.log"
    echo "---- alexnet_throughput --device cuda --mode $mode --batch $batch --iters $iters --warmup 3"
    if limited env "${ld_env[@]}" "$bin" --device cuda --mode "$mode" --batch "$batch" --iters "$iters" --warmup 3 >"$log" 2>&1; then
      :
    else
      rc=1
    fi
    cat "$log"
    echo "| $mode b$batch | $(rate_of "$log" || echo n/a) |" >>"$log_dir/throughput.md"
  done
  return $rc
}

stage_pytorch() {
  local py="" c
  if ! grep -q 'DEVICE' "$root/bench/compare_pytorch.sh"; then
    echo "skipped: bench/compare_pytorch.sh in this checkout measures the CPU only"
    note[pytorch]="compare_pytorch.sh has no device argument here"
    return 3
  fi
  # $PYTHON when set; else Debian's python3, else the one on PATH (where PyTorch's images
  # keep theirs), whichever has torch with CUDA.
  local -a candidates=(/usr/bin/python3 "$(command -v python3 || true)")
  [ -n "${PYTHON:-}" ] && candidates=("$PYTHON")
  for c in "${candidates[@]}"; do
    { [ -n "$c" ] && [ -x "$c" ]; } || continue
    if "$c" -c 'import sys, torch, torchvision; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      py=$c
      break
    fi
  done
  if [ -z "$py" ]; then
    echo "skipped: python3 with torch, torchvision and CUDA is not available here"
    note[pytorch]="no python3 with torch + CUDA on this machine"
    return 3
  fi
  bundle_links || return 1
  "$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())'
  # compare_pytorch.sh runs $BUILD_DIR/bin/alexnet_throughput and python3 alike: the
  # bundle's library path goes to ours alone, through a wrapper, and never to PyTorch.
  local bdir=$build_dir
  if [ -n "$bundle_dir" ]; then
    bdir="$bundle_tmp/compare-pytorch"
    mkdir -p "$bdir/bin"
    printf '#!/usr/bin/env bash\nexport LD_LIBRARY_PATH=%q\nexec %q "$@"\n' \
      "$bundle_ld_path" "$build_dir/bin/alexnet_throughput" >"$bdir/bin/alexnet_throughput"
    chmod +x "$bdir/bin/alexnet_throughput"
  fi
  echo "---- bench/compare_pytorch.sh 5 cuda"
  limited env BUILD_DIR="$bdir" PYTHON="$py" "$root/bench/compare_pytorch.sh" 5 cuda | tee "$log_dir/compare_pytorch.txt"
  local rc=${PIPESTATUS[0]}
  fence <"$log_dir/compare_pytorch.txt" >"$log_dir/pytorch.md"
  return "$rc"
}

# ---- the bundle's libraries -------------------------------------------------------------------
# The bundle's binaries run with LD_LIBRARY_PATH set (ld_env) to its lib/, then CUDA's
# libraries as this machine has them: the toolkit's, and the lib/ folders of python3's
# nvidia-* wheels (nvidia/cu13/lib, nvidia/cudnn/lib, ...), where PyTorch's images keep
# cuBLAS and cuDNN; then what LD_LIBRARY_PATH held (the driver's folder, say). Nothing
# else gets that path: python3 and the tools run as they would without the bundle.
ld_env=()
bundle_ok=1
bundle_missing=""
bundle_ld_path=""
bundle_commit="unknown"
bundle_date="unknown"

# Candidate folders, one a line; those that do not exist are dropped later.
cuda_lib_candidates() {
  local d py sp
  for d in "${CUDA_HOME:-}" "${nvcc_path:+$(dirname "$nvcc_path")/..}" /usr/local/cuda; do
    [ -n "$d" ] || continue
    echo "$d/lib64"
    echo "$d/targets/x86_64-linux/lib"
  done
  for py in "${PYTHON:-}" "$(command -v python3 || true)" /usr/bin/python3; do
    { [ -n "$py" ] && [ -x "$py" ]; } || continue
    "$py" - 2>/dev/null <<'PYEOF' || true
import os, site
dirs = list(site.getsitepackages()) + [site.getusersitepackages()]
try:
    import nvidia
    dirs += [os.path.dirname(p) for p in nvidia.__path__]
except Exception:
    pass
print("\n".join(dirs))
PYEOF
  done | while read -r sp; do
    for d in "$sp"/nvidia/*/lib "$sp"/nvidia/*/lib64; do echo "$d"; done
  done
}

# Fails the stage (with the missing libraries) when the bundle's binaries cannot load here.
bundle_links() {
  if [ -z "$bundle_dir" ] || ((bundle_ok)); then return 0; fi
  echo "FAIL: the bundle's binaries cannot load their libraries here:"
  printf '%s' "$bundle_missing"
  echo "LD_LIBRARY_PATH was $bundle_ld_path (the report's Bundle section says where the rest came from)"
  if [ -n "$current_stage" ]; then note[$current_stage]="libraries not found (see the Bundle section)"; fi
  return 1
}

if [ -n "$bundle_dir" ]; then
  declare -A seen_dir=()
  lib_dirs=()
  while read -r d; do
    [ -d "$d" ] || continue
    real=$(cd "$d" && pwd -P)
    [ -n "${seen_dir[$real]:-}" ] && continue
    seen_dir[$real]=1
    lib_dirs+=("$d")
  done < <(cuda_lib_candidates)
  cuda_path=""
  ldd_test_cuda=""
  for d in "${lib_dirs[@]}"; do cuda_path+=":$d"; done
  cuda_path+="${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -f "$bundle_tmp/manifest.txt" ]; then
    bundle_commit=$(sed -n 's/^commit: //p' "$bundle_tmp/manifest.txt" | head -n 1)
    bundle_date=$(sed -n 's/^date: //p' "$bundle_tmp/manifest.txt" | head -n 1)
  fi
  # ldd over every binary with PATH as LD_LIBRARY_PATH: 0 when nothing is "not found"
  # (a library, or a symbol version such as GLIBCXX_3.4.30 or GLIBC_2.34).
  bundle_ldd() {
    local b out ok=0
    bundle_missing=""
    : >"$log_dir/ldd.txt"
    for b in "$build_dir"/bin/*; do
      [ -x "$b" ] || continue
      out=$(env LD_LIBRARY_PATH="$1" ldd "$b" 2>&1) || true
      printf -- '---- ldd %s\n%s\n' "$(basename "$b")" "$out" >>"$log_dir/ldd.txt"
      [ "$(basename "$b")" = test_cuda ] && ldd_test_cuda=$out
      if grep -q 'not found' <<<"$out"; then
        ok=1
        bundle_missing+="  $(basename "$b"): $(grep 'not found' <<<"$out" | sed 's/^[[:space:]]*//' | paste -sd ';' -)"$'\n'
      fi
    done
    return $ok
  }
  # This machine's libstdc++ and libgcc_s when they are new enough, else the bundle's
  # (lib/gcc), which are as new as the compiler that built the binaries.
  gcc_libs="this machine's (new enough)"
  bundle_ld_path="$bundle_tmp/lib$cuda_path"
  if ! bundle_ldd "$bundle_ld_path"; then
    if [ -d "$bundle_tmp/lib/gcc" ] && grep -qE 'libstdc\+\+|libgcc_s|GLIBCXX_|CXXABI_|GCC_[0-9]' <<<"$bundle_missing"; then
      bundle_ld_path="$bundle_tmp/lib:$bundle_tmp/lib/gcc$cuda_path"
      gcc_libs="the bundle's lib/gcc (this machine's are older than the binaries need, or missing)"
      bundle_ldd "$bundle_ld_path" || bundle_ok=0
    else
      bundle_ok=0
    fi
  fi
  ld_env=("LD_LIBRARY_PATH=$bundle_ld_path")
  cudnn_dir=$(grep -o 'libcudnn.so.9 => /[^ ]*' <<<"$ldd_test_cuda" | awk '{print $3}' | xargs -r dirname || true)
  {
    echo "Unpacked into $bundle_tmp for this run. Its binaries' LD_LIBRARY_PATH, in order:"
    echo
    tr ':' '\n' <<<"$bundle_ld_path" | fence
    echo
    echo "Where test_cuda's CUDA libraries resolve (\`ldd bin/test_cuda | grep -E 'cudnn|cublas|cudart|not found'\`):"
    echo
    grep -E 'cudnn|cublas|cudart|not found' <<<"$ldd_test_cuda" | sed 's/^[[:space:]]*//; s/ (0x[0-9a-f]*)$//' | fence || true
    echo
    if [ -n "$cudnn_dir" ]; then
      parts=$(for f in "$cudnn_dir"/libcudnn_*.so.9; do if [ -e "$f" ]; then printf '%s ' "$(basename "$f")"; fi; done)
      echo "cuDNN's parts, loaded at run time from beside libcudnn.so.9: ${parts:-none}"
      echo
    fi
    echo "libstdc++ and libgcc_s: $gcc_libs."
    echo
    libcuda=$( (ldconfig -p 2>/dev/null | grep -m 1 'libcuda.so.1 ' | sed 's/.*=> //') || true)
    echo "The driver's libcuda.so.1 (loaded by libcudart at run time): ${libcuda:-not in the ldconfig cache}${LD_LIBRARY_PATH:+ (LD_LIBRARY_PATH held $LD_LIBRARY_PATH)}"
    echo
    if ((bundle_ok)); then
      echo "Every library the bundle's binaries load was found."
    else
      echo "**Not found** (the stages that run these binaries fail):"
      echo
      printf '%s' "$bundle_missing" | fence
    fi
    echo
    if [ -f "$bundle_tmp/sources.sha256" ]; then
      changed=$(cd "$root" && { sha256sum -c --quiet "$bundle_tmp/sources.sha256" 2>/dev/null || true; } | sed 's/: FAILED.*//')
      if [ -z "$changed" ]; then
        echo "The source tree here holds the files the bundle was built from."
      else
        echo "The source tree here differs from the one the bundle was built from in $(wc -l <<<"$changed") file(s) (the binaries are the bundle's; scripts such as bench/compare_pytorch.sh are this tree's): $(head -n 20 <<<"$changed" | paste -sd ' ' -)"
      fi
      echo
    fi
    echo "The bundle's manifest:"
    echo
    fence <"$bundle_tmp/manifest.txt"
  } >"$log_dir/bundle.md"
fi

# ---- run ------------------------------------------------------------------------------------
write_report
run_stage card stage_card
run_stage build stage_build
run_stage tests stage_tests
run_stage memcheck stage_memcheck
run_stage racecheck stage_racecheck
run_stage bench stage_bench
run_stage throughput stage_throughput
run_stage pytorch stage_pytorch

failed=0
for s in "${all_stages[@]}"; do
  if [ "${status[$s]}" = "FAIL" ]; then failed=$((failed + 1)); fi
done
echo "gpu_check: report in $out_file ($failed stage(s) failed)" >&2
((failed == 0))
