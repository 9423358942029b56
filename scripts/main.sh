#!/usr/bin/env bash
# The main job on the embedded default: train class-conditional 8x8 digits, then write a PNG grid of
# class-conditional samples with classifier-free guidance and the evaluation metrics.
# Extra arguments are config overrides, e.g. `scripts/main.sh trainer.max_steps=500`. Run again, it resumes
# runs/digits (a finished run only samples and evaluates again).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
resume=()
[ -e runs/digits/checkpoints/last ] && resume=(--resume)
sciffusion train configs/images/digits.yaml "$@" "${resume[@]}"
sciffusion sample runs/digits --n 100 --solver dpmpp_2m --steps 20 --guidance-scale 2.0 --out runs/digits/samples/digits_cfg.png
sciffusion evaluate runs/digits --n 500 --solver dpmpp_2m --steps 20 --guidance-scale 2.0
echo "samples: runs/digits/samples/digits_cfg.png   metrics: runs/digits/metrics.json"
echo "to run sciffusion yourself (the README's quickstarts), first type: . .venv/bin/activate"
