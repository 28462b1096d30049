#!/usr/bin/env bash
# The main job: the engine end to end on real data.
#   1. engine_smoke: AlexNet forward, backward, saliency pass and SGD steps (random batch).
#   2. predict on the saliency study's photographs with real ImageNet weights
#      (SqueezeNet 1.1 from ../shared/data, converted to HDF5; AlexNet's when a user has
#      converted them to weights/alexnet.h5, see weights/README.md).
#   3. saliency panels (image | map | overlay) for those photographs into out/demo/.
#   4. finetune on the small WikiArt set (7 styles, 280 paintings): SqueezeNet 1.1 from its
#      ImageNet weights (Case 1), and AlexNet Case 1 and Case 2 (from weights/alexnet.h5
#      when present, else from a random initialisation, which only shows the mechanics).
# Usage: ./demo.sh [DATA_DIR]   (default: ../shared/data)
set -euo pipefail
cd "$(dirname "$0")"
data=${1:-../shared/data}
bin=build/bin
out=out/demo
mkdir -p "$out"

echo "== engine_smoke"
"$bin/engine_smoke" --batch 4 --steps 2

if [ ! -d "$data/imagenet/samples" ] || [ ! -f "$data/weights/squeezenet1_1_imagenet.pth" ]; then
  echo "No data at $data: pass a folder holding imagenet/samples and weights/ (see ../shared/data/README.md),"
  echo "or run the tools on your own files: $bin/predict --weights W.h5 IMAGE...; $bin/saliency --weights W.h5 --out DIR IMAGE..."
  exit 0
fi

weights=("$out/squeezenet1_1.h5")
if [ ! -f "$out/squeezenet1_1.h5" ]; then
  /usr/bin/python3 weights/convert_torchvision.py --arch squeezenet1_1 \
    --pth "$data/weights/squeezenet1_1_imagenet.pth" --out "$out/squeezenet1_1.h5"
fi
[ -f weights/alexnet.h5 ] && weights+=(weights/alexnet.h5)

s="$data/imagenet/samples"
images=("$s/n02007558_flamingo.JPEG" "$s/n02123045_tabby.JPEG" "$s/n02110185_Siberian_husky.JPEG"
        "$s/n02107142_Doberman.JPEG" "$s/n04399382_teddy.JPEG")
for w in "${weights[@]}"; do
  name=$(basename "$w" .h5)
  echo "== predict ($name)"
  "$bin/predict" --weights "$w" --topk 3 "${images[@]}"
  echo "== saliency ($name, vanilla and smoothgrad): panels in $out/$name/"
  "$bin/saliency" --weights "$w" --out "$out/$name/vanilla" "${images[@]}" > "$out/$name-vanilla.jsonl"
  "$bin/saliency" --weights "$w" --method smoothgrad --samples 16 --out "$out/$name/smoothgrad" "${images[@]}" \
    > "$out/$name-smoothgrad.jsonl"
  ls "$out/$name/vanilla"/*_panel.png "$out/$name/smoothgrad"/*_panel.png
done

mini="$data/wikiart-7styles-mini"
if [ ! -d "$mini" ]; then
  echo "No $mini: run finetune on your own ImageFolder tree:"
  echo "  $bin/finetune --data ROOT --out RUN --weights W.h5 [--case 1|2] [--epochs N]"
  exit 0
fi
rm -rf "$out/finetune"
mkdir -p "$out/finetune"
echo "== finetune: SqueezeNet 1.1, ImageNet weights, Case 1, $mini"
"$bin/finetune" --data "$mini" --out "$out/finetune/squeezenet-case1" --weights "$out/squeezenet1_1.h5" \
  --epochs 5 --cache-dir "$out/finetune/cache"
if [ -f weights/alexnet.h5 ]; then
  alexnet=(--weights weights/alexnet.h5)
  echo "== finetune: AlexNet, ImageNet weights (weights/alexnet.h5)"
else
  alexnet=(--arch alexnet)
  echo "== finetune: AlexNet from a random initialisation (no weights/alexnet.h5: see weights/README.md)"
fi
for c in 1 2; do
  echo "-- AlexNet Case $c"
  "$bin/finetune" --data "$mini" --out "$out/finetune/alexnet-case$c" "${alexnet[@]}" --case "$c" \
    --epochs 3 --cache-dir "$out/finetune/cache"
done
echo "Curves, confusion matrices, metrics and final.h5 of each run: $out/finetune/*/"
