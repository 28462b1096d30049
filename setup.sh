#!/usr/bin/env bash
# Installs every dependency from Debian's packages (non-interactive, idempotent; as root
# or through sudo), then configures and builds the project in Release into ./build.
# Extra CMake arguments: ENGINE_CMAKE_ARGS="-DENGINE_WITH_CUDA=OFF" ./setup.sh
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  build-essential cmake pkg-config
  libhdf5-dev libpng-dev libjpeg62-turbo-dev libopenblas-dev libopenblas-openmp-dev
  libdnnl-dev ocl-icd-opencl-dev  # oneDNN's CMake package requires OpenCL's (a Recommends, not a Depends)
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev libfmt-dev libtcmalloc-minimal4
  python3 python3-numpy python3-h5py python3-torch python3-torchvision python3-pil
  clang libclang-rt-14-dev libomp-14-dev  # the libFuzzer targets (tests/fuzz), built by .ci/run
  gnuplot-nox  # finetune's curves.png and confusion.png (pngcairo terminal)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# shellcheck disable=SC2086
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${ENGINE_CMAKE_ARGS:-}
cmake --build build -j"$(nproc)"
