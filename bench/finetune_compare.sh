#!/usr/bin/env bash
# finetune's three phases beside PyTorch's, in the same run on the same machine: AlexNet
# Case 1 with the new layer trained (`--train new`) on an ImageFolder tree.
#   features  - the frozen trunk over every train and test image, decoding included
#   cached    - one epoch of the classifier on the cached features (median of 3 epochs)
#   full      - one epoch through the whole network from the images (--no-feature-cache)
# PyTorch (bench/pytorch_finetune.py) is run as installed and tuned (bench/pytorch_env.sh).
# Prints seconds and ours/PyTorch speed ratios (above 1: the engine is faster).
#   bench/finetune_compare.sh [DATA]    (default ../shared/data/wikiart-7styles; needs build/)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/wikiart-7styles}
bin=${BUILD_DIR:-build}/bin
. bench/pytorch_env.sh
[ -d "$data/train" ] || { echo "finetune_compare.sh: $data has no train/ folder" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

common=(--data "$data" --arch alexnet --case 1 --train new --batch-size 32 --workers 2 --seed 0)
"$bin/finetune" "${common[@]}" --epochs 3 --out "$tmp/cached" >"$tmp/cached.log" 2>&1
"$bin/finetune" "${common[@]}" --epochs 1 --no-feature-cache --out "$tmp/full" >"$tmp/full.log" 2>&1
# Training seconds of an epoch: training images / training images per second.
read -r f c <<<"$("$py" - "$tmp/cached/metrics.json" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
n = d["run"]["train_images"]
print(f'{d["run"]["feature_seconds"]:.3f}', f'{statistics.median(n / e["images_per_second"] for e in d["epochs"]):.3f}')
PY
)"
u=$("$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); print("%.3f" % (d["run"]["train_images"] / d["epochs"][0]["images_per_second"]))' "$tmp/full/metrics.json")

field() { awk -v k="$1:" '$1 == k {print $2}' "$2"; }
"$py" bench/pytorch_finetune.py --data "$data" >"$tmp/torch.log" 2>&1
if [ ${#tuned_env[@]} -gt 0 ]; then
  "${tuned_env[@]}" "$py" bench/pytorch_finetune.py --data "$data" >"$tmp/tuned.log" 2>&1
else
  : >"$tmp/tuned.log"
fi

printf "%-10s %10s %10s %10s %11s %11s\n" "phase" "ours s" "torch s" "tuned s" "ours/torch" "ours/tuned"
row() {
  local name=$1 a=$2 b t
  b=$(field "$3" "$tmp/torch.log")
  t=$(field "$3" "$tmp/tuned.log")
  printf "%-10s %10s %10s %10s %11s %11s\n" "$name" "$a" "$b" "${t:-n/a}" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", b/a}')" \
    "$(awk -v a="$a" -v b="${t:-0}" 'BEGIN{if (b+0>0) printf "%.2f", b/a; else print "n/a"}')"
}
row features "$f" features_s
row cached "$c" cached_epoch_s
row full "$u" full_epoch_s
echo "($(grep -m1 threads "$tmp/torch.log"); tuned: $(grep -m1 -o 'threads [0-9]*' "$tmp/tuned.log" || echo none))"
