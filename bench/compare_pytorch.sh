#!/usr/bin/env bash
# Our AlexNet throughput beside PyTorch's, in the same run on the same machine:
# forward and train at batch 64, forward at batch 16, saliency at batch 1. PyTorch is
# measured twice: as installed, and tuned (bench/pytorch_env.sh says how). Prints
# our/PyTorch ratios.
# On a GPU (DEVICE cuda) both run in exact FP32 (no TF32) and PyTorch is measured once,
# as installed there.
#   bench/compare_pytorch.sh [ITERS] [DEVICE]   (needs build/bin/alexnet_throughput;
#   BUILD_DIR and PYTHON override build/ and Debian's /usr/bin/python3)
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-5}
device=${2:-cpu}
ours=${BUILD_DIR:-build}/bin/alexnet_throughput
. bench/pytorch_env.sh
[ "$device" = cpu ] || tuned_env=()
rate() { tail -n 1 | awk '{print $2}'; }

printf "%-18s %12s %14s %14s %10s %10s\n" "case" "ours img/s" "torch img/s" "tuned img/s" "ours/torch" "ours/tuned"
for c in "forward 64" "train 64" "forward 16" "saliency 1"; do
  set -- $c
  mode=$1 batch=$2
  n=$iters
  [ "$batch" -eq 1 ] && n=$((iters * 4))
  [ "$device" != cpu ] && n=$((n * 4))
  a=$("$ours" --device "$device" --mode "$mode" --batch "$batch" --iters "$n" | rate)
  b=$("$py" bench/pytorch_throughput.py --device "$device" --mode "$mode" --batch "$batch" --iters "$n" | rate)
  if [ ${#tuned_env[@]} -gt 0 ]; then
    t=$("${tuned_env[@]}" "$py" bench/pytorch_throughput.py --device "$device" --mode "$mode" --batch "$batch" --iters "$n" | rate)
  else
    t=nan
  fi
  printf "%-18s %12s %14s %14s %10s %10s\n" "$mode b$batch" "$a" "$b" "$t" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')" \
    "$(awk -v a="$a" -v b="$t" 'BEGIN{if (b+0>0) printf "%.2f", a/b; else print "n/a"}')"
done
[ ${#tuned_env[@]} -gt 0 ] || [ "$device" != cpu ] || echo "(tuned PyTorch needs tcmalloc: apt-get install libtcmalloc-minimal4)"
