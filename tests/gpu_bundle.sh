#!/usr/bin/env bash
# Packs the CUDA test and benchmark binaries for a GPU machine on which the project
# cannot be configured (no HDF5, libpng, OpenBLAS, oneDNN, GoogleTest... there), for
# tests/gpu_check.sh --bundle to run there:
#   1. builds test_cuda, test_cuda_nets, test_cuda_tools (with the tools it runs: predict,
#      saliency, finetune), bench_cuda_ops, cudnn_conv_algos and alexnet_throughput for
#      Hopper
#      (sm_90: H100, H200) in Release into build-gpu-bundle (skipped with --build-dir);
#   2. writes gpu-bundle/bundle.tar.xz holding
#        bin/           the binaries, stripped
#        lib/           every shared library they load, as ldd resolves it here, except
#                       glibc's own (the loader, libc, libm, libpthread, libdl, librt...),
#                       which must come from the machine's loader, and CUDA's (libcudart,
#                       libcublas, libcublasLt, libcudnn*, libcuda), which come from the
#                       machine's toolkit, its Python's nvidia-* wheels and its driver
#        lib/gcc/       libstdc++ and libgcc_s, apart: gpu_check.sh uses them only where
#                       the machine's own are older than the binaries need (ours ask for a
#                       newer glibc than the rest of the bundle does)
#        manifest.txt   commit, date, nvcc and CMake settings, the glibc the files need,
#                       the CUDA libraries expected from the machine, every file's size
#        sources.sha256 the source tree as packed (with --build-dir, keep that build
#                       current), so that gpu_check.sh can say which files changed since
#      and a copy of the manifest beside it (gpu-bundle/manifest.txt);
#   3. checks the tarball stays under 40 MiB (what travels to the GPU machine, working
#      tree included, is limited to 64 MiB) and prints the command to run there.
#
#   tests/gpu_bundle.sh [--build-dir DIR] [--jobs N]
#   --build-dir DIR   take the binaries from DIR/bin (a CUDA build made before); no
#                     configure, no build. Relative to the repository root
#   --jobs N          parallel build jobs (default: the number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

build_dir=""
jobs=$(nproc 2>/dev/null || echo 2)
while (($#)); do
  case "$1" in
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_bundle: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

targets=(test_cuda test_cuda_nets test_cuda_tools predict saliency finetune bench_cuda_ops cudnn_conv_algos
         alexnet_throughput)
out_dir="$root/gpu-bundle"
max_mib=40
die() { echo "gpu_bundle: $*" >&2; exit 1; }

# ---- the build ------------------------------------------------------------------------------
if [ -n "$build_dir" ]; then
  case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
  [ -d "$build_dir" ] || die "--build-dir: no such directory: $build_dir"
else
  build_dir="$root/build-gpu-bundle"
  command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || die "nvcc not found: the bundle needs the CUDA build"
  nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  configure_log=$(mktemp "${TMPDIR:-/tmp}/gpu_bundle_configure.XXXXXX")
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc_bin" \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DENGINE_WITH_CUDA=ON -DENGINE_BUILD_TESTS=ON -DENGINE_BUILD_BENCH=ON \
    | tee "$configure_log" || { rm -f "$configure_log"; die "configure failed"; }
  if ! grep -q "CUDA backend: ON" "$configure_log"; then
    rm -f "$configure_log"
    die "configured without the CUDA backend"
  fi
  rm -f "$configure_log"
  cmake --build "$build_dir" -j"$jobs" --target "${targets[@]}"
fi
for t in "${targets[@]}"; do
  [ -x "$build_dir/bin/$t" ] || die "$build_dir/bin/$t is missing"
done
cache="$build_dir/CMakeCache.txt"
cache_value() { [ -f "$cache" ] && sed -n "s/^$1:[A-Z]*=//p" "$cache" | head -n 1; }
cuda_arch=$(cache_value CMAKE_CUDA_ARCHITECTURES || true)
build_type=$(cache_value CMAKE_BUILD_TYPE || true)
nvcc_bin=$(cache_value CMAKE_CUDA_COMPILER || true)
[ -x "${nvcc_bin:-}" ] || nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
nvcc_version=$("$nvcc_bin" --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*' || echo unknown)

# ---- the bundle's contents ----------------------------------------------------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bundle.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib/gcc"
for t in "${targets[@]}"; do
  cp "$build_dir/bin/$t" "$stage/bin/$t"
  strip --strip-unneeded "$stage/bin/$t"
done

# Libraries the machine provides: glibc's (they must match its loader) and CUDA's.
machine_lib() {
  case "$1" in
    ld-linux*|linux-vdso*|libc.so*|libm.so*|libmvec.so*|libpthread.so*|libdl.so*|librt.so*) return 0 ;;
    libresolv.so*|libutil.so*|libanl.so*|libnss_*|libBrokenLocale.so*|libc_malloc_debug.so*) return 0 ;;
    libcudart.so*|libcublas.so*|libcublasLt.so*|libcudnn*|libcuda.so*) return 0 ;;
  esac
  return 1
}

# Where a library goes in the bundle.
lib_dir() { case "$1" in libstdc++.so*|libgcc_s.so*) echo lib/gcc ;; *) echo lib ;; esac; }

declare -A copied=()
expected=()
for t in "${targets[@]}"; do
  ldd_out=$(ldd "$stage/bin/$t" 2>&1) || die "ldd failed on $t: $ldd_out"
  if grep -q 'not found' <<<"$ldd_out"; then
    die "$t: libraries not found here: $(grep 'not found' <<<"$ldd_out" | xargs)"
  fi
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if machine_lib "$name"; then
      case "$name" in libcu*) expected+=("$name") ;; esac
      continue
    fi
    [ -n "${copied[$name]:-}" ] && continue
    cp -L "$path" "$stage/$(lib_dir "$name")/$name"
    chmod u+w "$stage/$(lib_dir "$name")/$name"
    copied[$name]=$path
  done <<<"$ldd_out"
done
mapfile -t expected < <(printf '%s\n' "${expected[@]}" | sort -u)

# Each binary, with only lib/ added to the search path, must find everything it does not
# expect from the machine in lib/.
for t in "${targets[@]}"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    machine_lib "$name" && continue
    [ "$path" = "$stage/$(lib_dir "$name")/$name" ] || die "$t: $name resolves to $path, not to the bundle's lib/"
  done < <(LD_LIBRARY_PATH="$stage/lib:$stage/lib/gcc" ldd "$stage/bin/$t")
done

# The newest glibc symbol version any file asks for: the machine's glibc must be as new.
newest_glibc() {
  local f
  for f in "$@"; do objdump -T "$f" 2>/dev/null || true; done |
    grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1
}
glibc_needed=$(newest_glibc "$stage"/bin/* "$stage"/lib/*.so*) || true
glibc_needed_gcc=$(newest_glibc "$stage"/lib/gcc/*) || true

commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git -C "$root" status --porcelain 2>/dev/null | head -n 1)" ]; then
  commit="$commit (with uncommitted changes)"
fi
# The source tree as built: tracked files and untracked ones git does not ignore.
(cd "$root" && git ls-files -z -co --exclude-standard 2>/dev/null | sort -z |
  while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
  xargs -0 -r sha256sum) >"$stage/sources.sha256"

{
  echo "engine GPU bundle"
  echo "commit: $commit"
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  os_name=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || true)
  echo "built on: ${os_name:-$(uname -sr)}, $(ldd --version | head -n 1)"
  echo "nvcc: $nvcc_version ($nvcc_bin)"
  echo "build: $build_dir, CMAKE_BUILD_TYPE=${build_type:-unknown}, CMAKE_CUDA_ARCHITECTURES=${cuda_arch:-unknown}"
  echo "needs from the machine: glibc >= ${glibc_needed:-unknown} (>= ${glibc_needed_gcc:-unknown} where lib/gcc is used), the NVIDIA driver (libcuda.so.1), ${expected[*]}"
  echo "files (bytes):"
  for t in "${targets[@]}"; do echo "$(stat -c %s "$stage/bin/$t") bin/$t"; done
  while read -r name; do
    f="$(lib_dir "$name")/$name"
    echo "$(stat -c %s "$stage/$f") $f (from ${copied[$name]})"
  done < <(printf '%s\n' "${!copied[@]}" | sort)
  echo "total: $(du -sb "$stage/bin" "$stage/lib" | awk '{s += $1} END {print s}') bytes unpacked"
} >"$stage/manifest.txt"

# ---- the tarball ------------------------------------------------------------------------------
mkdir -p "$out_dir"
tar -C "$stage" -cf - manifest.txt sources.sha256 bin lib | xz -9 -T"$jobs" >"$out_dir/bundle.tar.xz.tmp"
mv "$out_dir/bundle.tar.xz.tmp" "$out_dir/bundle.tar.xz"
cp "$stage/manifest.txt" "$out_dir/manifest.txt"
size=$(stat -c %s "$out_dir/bundle.tar.xz")
size_mib=$(awk -v s="$size" 'BEGIN {printf "%.1f", s / 1048576}')
tree_bytes=$(cd "$root" && git ls-files -z -co --exclude-standard 2>/dev/null | du -cb --files0-from=- 2>/dev/null | tail -n 1 | awk '{print $1}')
tree_mib=$(awk -v s="${tree_bytes:-0}" 'BEGIN {printf "%.1f", s / 1048576}')
cat "$out_dir/manifest.txt"
echo
if ((size > max_mib * 1048576)); then
  die "$out_dir/bundle.tar.xz is $size_mib MiB, over the $max_mib MiB it may take"
fi
echo "gpu_bundle: $out_dir/bundle.tar.xz is $size_mib MiB (under $max_mib MiB); with the working tree ($tree_mib MiB) that is what travels"
echo "gpu_bundle: on the GPU machine, the device tool's run with"
echo "  carry: [\"gpu-bundle\"]"
# shellcheck disable=SC2016  # $OUT is expanded on the GPU machine
echo '  command: tests/gpu_check.sh --bundle gpu-bundle --budget 550 --out $OUT/gpu_report.md'
echo "gpu_bundle: or, where one call's 10 minutes cannot hold every stage, in two calls:"
# shellcheck disable=SC2016
echo '  tests/gpu_check.sh --bundle gpu-bundle --stages card,build,tests,bench,throughput,pytorch --budget 550 --out $OUT/gpu_report.md'
# shellcheck disable=SC2016
echo '  tests/gpu_check.sh --bundle gpu-bundle --stages build,memcheck,racecheck --budget 550 --out $OUT/gpu_report_2.md'
