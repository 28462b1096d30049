#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU and the CUDA toolkit:
#   card        nvidia-smi: name, driver, memory, compute capability
#   build       configure for this card (its compute capability, else CMake's "native")
#               and build the CUDA tests, benchmarks and alexnet_throughput into build-gpu
#               (skipped with --build-dir: a build made elsewhere and carried over)
#   tests       every CUDA test binary (bin/test_cuda*); fails on any failure and on any
#               SKIPPED test, since on a GPU machine nothing may skip
#   memcheck    compute-sanitizer --tool memcheck over the CUDA tests, ENGINE_CUDA_CACHING=0
#               so every allocation is a real cudaMalloc the tool can see (by default all
#               but the launch-heavy CudaGradcheck tests, whose kernels the CudaTyped tests
#               run too, and SqueezeNet float32 of the whole networks)
#   racecheck   compute-sanitizer --tool racecheck over the tests of our own kernels
#   bench       bin/bench_cuda_ops (ceilings, GEMM, convolution, memory-bound kernels)
#   throughput  bin/alexnet_throughput --device cuda: forward and train at batch 64,
#               saliency at batch 1
#   pytorch     bench/compare_pytorch.sh 5 cuda: PyTorch's AlexNet on the same card beside
#               ours, when python3 ($PYTHON, else Debian's) has torch with CUDA
# Writes one Markdown report (rewritten after every stage, so a run cut short still
# leaves one) and, when $OUT is set, copies it and the stage logs there. Each stage runs
# under `timeout`; a failing stage is recorded and the next one runs. Exits 1 if any
# stage failed.
#
#   tests/gpu_check.sh [--build-dir DIR] [--out FILE] [--stages a,b,...] [--budget SECONDS]
#                      [--jobs N] [--tail LINES]
#   --build-dir DIR   reuse DIR (must hold bin/test_cuda); no configure, no build. DIR and
#                     FILE below, when relative, are taken from the repository root
#   --out FILE        the report (default gpu_report.md); stage logs go to FILE's name + _logs/
#   --stages LIST     run only these stages (default: all, in the order above)
#   --budget SECONDS  overall time limit: each stage's limit is cut to what is left, and
#                     stages that would get less than a minute are skipped
# Stage limits (seconds) can be changed with GPU_CHECK_LIMIT_<STAGE>=N, e.g.
# GPU_CHECK_LIMIT_MEMCHECK=3600; the sanitizers' gtest filters with
# GPU_CHECK_MEMCHECK_FILTER (e.g. '*' for everything), GPU_CHECK_MEMCHECK_NETS_FILTER and
# GPU_CHECK_RACECHECK_FILTER.
# Where one command may run only so long, split the check and reuse the build:
#   tests/gpu_check.sh --stages card,build,tests --budget 550
#   tests/gpu_check.sh --build-dir build-gpu --stages memcheck,racecheck --budget 550 --out gpu_report_2.md
#   tests/gpu_check.sh --build-dir build-gpu --stages bench,throughput,pytorch --budget 550 --out gpu_report_3.md
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# ---- options ------------------------------------------------------------------------------
build_dir=""
out_file="gpu_report.md"
stages="card,build,tests,memcheck,racecheck,bench,throughput,pytorch"
budget=0
jobs=$(nproc 2>/dev/null || echo 4)
tail_lines=40
while (($#)); do
  case "$1" in
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift 2 ;;
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
if [ -n "$build_dir" ]; then
  prebuilt=1
  build_dir=$(cd "$build_dir" 2>/dev/null && pwd) || { echo "gpu_check: --build-dir: no such directory" >&2; exit 2; }
else
  build_dir="$root/build-gpu"
fi
case "$out_file" in /*) ;; *) out_file="$root/$out_file" ;; esac
log_dir="${out_file%.md}_logs"
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
if command -v nvidia-smi >/dev/null 2>&1; then
  line=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
  if [ -n "$line" ]; then
    IFS=',' read -r card_name card_driver card_memory <<<"$line"
    card_name=$(echo "$card_name" | xargs); card_driver=$(echo "$card_driver" | xargs)
    card_memory=$(echo "$card_memory" | xargs)
  fi
  card_cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | xargs || true)
fi
driver_cuda=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n 1 | awk '{print $3}' || true)
toolkit_cuda="not found"
[ -n "$nvcc_path" ] && toolkit_cuda=$("$nvcc_path" --version | grep -o 'release [0-9.]*' | awk '{print $2}')
cudnn_version="unknown"
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
    echo "- CUDA toolkit: $toolkit_cuda (${nvcc_path:-no nvcc}); cuDNN $cudnn_version"
    echo "- compute-sanitizer: ${sanitizer:-not found}"
    echo "- Source: $root at $commit"
    if ((prebuilt)); then echo "- Build: $build_dir (carried over; not rebuilt here)"; else echo "- Build: $build_dir"; fi
    echo "- Stage logs: $log_dir"
    echo
    echo "| stage | result | seconds | note |"
    echo "| --- | --- | ---: | --- |"
    for s in "${all_stages[@]}"; do
      wanted "$s" || continue
      echo "| $s | ${status[$s]} | ${secs[$s]} | ${note[$s]} |"
    done
    echo
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
    cp "$out_file" "$OUT/" 2>/dev/null || true
    if mkdir -p "$OUT/$(basename "$log_dir")"; then cp -r "$log_dir/." "$OUT/$(basename "$log_dir")/" 2>/dev/null || true; fi
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
  command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA driver on this machine"; return 1; }
  limited nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || return 1
  limited nvidia-smi --query-gpu=compute_cap --format=csv || true
  limited nvidia-smi || return 1
  [ "$card_name" != "unknown" ] || { echo "nvidia-smi lists no GPU"; return 1; }
}

stage_build() {
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
  limited cmake --build "$build_dir" -j"$jobs" --target test_cuda test_cuda_nets bench_cuda_ops alexnet_throughput
}

# The CUDA test binaries of the build.
test_binaries() {
  local b
  for b in "$build_dir"/bin/test_cuda*; do [ -x "$b" ] && echo "$b"; done
}

stage_tests() {
  local bins b rc=0 skipped=0 summary=""
  bins=$(test_binaries)
  [ -n "$bins" ] || { echo "no test_cuda* binaries in $build_dir/bin"; return 1; }
  for b in $bins; do
    echo "---- $(basename "$b")"
    if limited env -u GTEST_ALSO_RUN_DISABLED_TESTS -u GTEST_FILTER -u ENGINE_CUDA_CACHING -u GTEST_OUTPUT \
        "$b" --gtest_brief=1 --gtest_output="xml:$log_dir/tests-$(basename "$b").xml" >"$log_dir/tests-$(basename "$b").log" 2>&1; then
      :
    else
      rc=1
    fi
    cat "$log_dir/tests-$(basename "$b").log"
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
    note[tests]="tests SKIPPED: a GPU machine must run every test"
    rc=1
  fi
  return $rc
}

# sanitize TOOL BINARY FILTER: compute-sanitizer with the engine's cache off.
sanitize() {
  local tool=$1 bin=$2 filter=$3
  echo "---- compute-sanitizer --tool $tool $(basename "$bin") --gtest_filter=$filter"
  limited env -u GTEST_ALSO_RUN_DISABLED_TESTS -u GTEST_FILTER ENGINE_CUDA_CACHING=0 \
    "$sanitizer" --tool "$tool" --error-exitcode 99 --print-limit 100 \
    "$bin" --gtest_brief=1 --gtest_filter="$filter"
}

stage_memcheck() {
  [ -n "$sanitizer" ] || { echo "compute-sanitizer not found"; return 1; }
  [ -x "$build_dir/bin/test_cuda" ] || { echo "no $build_dir/bin/test_cuda"; return 1; }
  local rc=0
  # test_cuda but its central-difference checks (thousands of tiny launches each, on the
  # kernels the CudaTyped tests also run); of the whole networks, SqueezeNet in float32.
  sanitize memcheck "$build_dir/bin/test_cuda" "${GPU_CHECK_MEMCHECK_FILTER:--CudaGradcheck.*}" || rc=1
  if [ -x "$build_dir/bin/test_cuda_nets" ]; then
    sanitize memcheck "$build_dir/bin/test_cuda_nets" "${GPU_CHECK_MEMCHECK_NETS_FILTER:-*SqueezeNet*float32*}" || rc=1
  fi
  return $rc
}

stage_racecheck() {
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
  [ -x "$bin" ] || { echo "no $bin"; return 1; }
  limited "$bin" --benchmark_counters_tabular=true --benchmark_out="$log_dir/bench_cuda_ops.json" \
    --benchmark_out_format=json || rc=1
  if command -v python3 >/dev/null && [ -s "$log_dir/bench_cuda_ops.json" ]; then
    python3 - "$log_dir/bench_cuda_ops.json" >"$log_dir/bench.md" <<'EOF' || true
import json, sys
d = json.load(open(sys.argv[1]))
print("Device: %s\n" % d.get("context", {}).get("cuda_device", "unknown"))
cols = ["GFLOP/s", "GB/s", "frac_of_copy", "frac_of_cublas", "frac_of_cudnn"]
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
  return $rc
}

# images/s from alexnet_throughput or pytorch_throughput.py (their last line).
rate_of() { grep -E '^images/s:' "$1" | tail -n 1 | awk '{print $2}'; }

throughput_cases=("forward 64" "train 64" "saliency 1")

stage_throughput() {
  local bin="$build_dir/bin/alexnet_throughput" rc=0 c mode batch iters log
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
    if limited "$bin" --device cuda --mode "$mode" --batch "$batch" --iters "$iters" --warmup 3 >"$log" 2>&1; then
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
  local py=${PYTHON:-/usr/bin/python3}
  [ -x "$py" ] || py=$(command -v python3 || true)
  if ! grep -q 'DEVICE' "$root/bench/compare_pytorch.sh"; then
    echo "skipped: bench/compare_pytorch.sh in this checkout measures the CPU only"
    note[pytorch]="compare_pytorch.sh has no device argument here"
    return 3
  fi
  if [ -z "$py" ] || ! "$py" -c 'import sys, torch, torchvision; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "skipped: python3 with torch, torchvision and CUDA is not available here"
    note[pytorch]="no python3 with torch + CUDA on this machine"
    return 3
  fi
  "$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())'
  echo "---- bench/compare_pytorch.sh 5 cuda"
  limited env BUILD_DIR="$build_dir" PYTHON="$py" "$root/bench/compare_pytorch.sh" 5 cuda | tee "$log_dir/compare_pytorch.txt"
  local rc=${PIPESTATUS[0]}
  fence <"$log_dir/compare_pytorch.txt" >"$log_dir/pytorch.md"
  return "$rc"
}

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
