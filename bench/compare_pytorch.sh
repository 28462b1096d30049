#!/usr/bin/env bash
# Our AlexNet throughput beside PyTorch's, in the same run on the same machine:
# forward and train at batch 64, forward at batch 16, saliency at batch 1. PyTorch is
# measured twice: as installed, and tuned (tcmalloc preloaded, and the OpenBLAS
# variables of this environment unset for that command only). Prints our/PyTorch ratios.
#   bench/compare_pytorch.sh [ITERS]        (needs build/bin/alexnet_throughput)
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-5}
ours=build/bin/alexnet_throughput
py=/usr/bin/python3
tcmalloc=$(ls /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 2>/dev/null | head -n 1 || true)
rate() { tail -n 1 | awk '{print $2}'; }

printf "%-18s %12s %14s %14s %10s %10s\n" "case" "ours img/s" "torch img/s" "tuned img/s" "ours/torch" "ours/tuned"
for c in "forward 64" "train 64" "forward 16" "saliency 1"; do
  set -- $c
  mode=$1 batch=$2
  n=$iters
  [ "$batch" -eq 1 ] && n=$((iters * 4))
  a=$("$ours" --device cpu --mode "$mode" --batch "$batch" --iters "$n" | rate)
  b=$("$py" bench/pytorch_throughput.py --mode "$mode" --batch "$batch" --iters "$n" | rate)
  if [ -n "$tcmalloc" ]; then
    t=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_NUM_THREADS LD_PRELOAD="$tcmalloc" \
      "$py" bench/pytorch_throughput.py --mode "$mode" --batch "$batch" --iters "$n" | rate)
  else
    t=nan
  fi
  printf "%-18s %12s %14s %14s %10s %10s\n" "$mode b$batch" "$a" "$b" "$t" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')" \
    "$(awk -v a="$a" -v b="$t" 'BEGIN{if (b+0>0) printf "%.2f", a/b; else print "n/a"}')"
done
[ -n "$tcmalloc" ] || echo "(tuned PyTorch needs tcmalloc: apt-get install libtcmalloc-minimal4)"
