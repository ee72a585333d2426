#!/usr/bin/env bash
# The main job, end to end on the embedded defaults: install everything, then
#   1. build a shard store from procedurally generated rooms with the Prefect
#      `build-dataset` flow (Prefect's local mode, a Dask LocalCluster),
#   2. write PNG previews: rendered colour/depth, correspondences over images,
#   3. pretrain a tiny Concerto for a few steps on the store,
#   4. probe the encoder and draw PCA pictures of its features.
# Everything lands under outputs/demo (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-outputs/demo}
STEPS=${STEPS:-40}
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
PY=.venv/bin/python
mkdir -p "$OUT"

echo "== 1/4 build-dataset flow: synthetic rooms -> depth -> correspondences -> image groups -> Zarr shards"
$PY -m flows.build_dataset --store "$OUT/store" \
    --source "synthetic:$OUT/scenes:num_scenes=6,seed=0"

echo "== 2/4 previews"
$PY -m preprocess.render.preview --source "synthetic:$OUT/scenes:num_scenes=6,seed=0" --out "$OUT/previews" --max-scenes 2
$PY -m pipelines.store.inspect "$OUT/store" --versions --coverage
$PY -m pipelines.store.inspect "$OUT/store" --draw 0 --out "$OUT/previews/correspondences.png"

echo "== 3/4 pretraining (tiny config, $STEPS steps)"
$PY -m concerto.train --data "$OUT/store" --config tiny --steps "$STEPS" --output "$OUT/train"

echo "== 4/4 linear probe and feature pictures"
$PY -m concerto.eval.linear_probe --data "$OUT/store" --checkpoint "$OUT/train" --output "$OUT/probe.json"
$PY -m concerto.eval.pictures --data "$OUT/store" --checkpoint "$OUT/train" --out "$OUT/pictures"

echo
echo "done: store $OUT/store, previews $OUT/previews, training run $OUT/train, probe $OUT/probe.json, pictures $OUT/pictures"
