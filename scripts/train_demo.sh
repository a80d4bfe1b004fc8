#!/usr/bin/env bash
# Reproduce the demo model models/remoteclip-demo (fixed seeds: byte-identical on the same torch build and
# thread count; CPU, a few minutes on 2 cores); models/README.md has the log and the evaluation:
# caption tables from ../shared/data -> small-vit trained from scratch -> bundle -> evaluation tables.
#   scripts/train_demo.sh            (REMOTECLIP_DATA overrides the data folder; RUN the run folder)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${REMOTECLIP_DATA:-../shared/data}
RUN=${RUN:-runs/demo}
EPOCHS=${EPOCHS:-20}
BUNDLE=${BUNDLE:-models/remoteclip-demo}

rm -rf "$RUN"
$PY -m training.demo_data --data "$DATA" --out "$RUN/data" --seed 0 --test-per-class 6 --captions-per-image 3
$PY -m training.pretrain --config small-vit --train "$RUN/data/train.csv" --val "$RUN/data/val.csv" \
    --eval-folder "$DATA/scenes/rsscn7" --eval-split "$RUN/data/rsscn7_split.json" --eval-every 5 \
    --epochs "$EPOCHS" --batch-size 64 --lr 1e-3 --warmup 10 --wd 0.1 --precision fp32 --threads 2 --seed 0 \
    --out "$RUN" --quiet
$PY -m training.export --arch small-vit --checkpoint "$RUN/model.pt" --out "$BUNDLE" --name remoteclip-demo-small --verify
cp "$RUN/data/rsscn7_split.json" "$BUNDLE/../remoteclip-demo.rsscn7_split.json"
for src in checkpoint bundle; do
  if [ "$src" = checkpoint ]; then M=(--checkpoint "$RUN/model.pt" --arch small-vit); else M=(--bundle "$BUNDLE"); fi
  $PY -m training.evaluate "${M[@]}" --zeroshot "$DATA/scenes/rsscn7" --split-file "$RUN/data/rsscn7_split.json" \
      --linear-probe --knn 5 --few-shot 1 5 --out "$RUN/eval-$src"
done
