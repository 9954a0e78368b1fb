#!/usr/bin/env bash
# Pretrains the offline demo's small T5 1.1 on the prefixed synthetic tasks with the project's own trainer,
# then writes it to prompt_tuning_jax/demo_assets/ as a T5X legacy checkpoint (replacing the packaged one).
#
#   bash scripts/pretrain_demo_model.sh [MODEL_DIR] [--gin.NAME=VALUE ...]
#
# MODEL_DIR (default /tmp/demo_pretrain) keeps the orbax checkpoints; re-running resumes there. About 17
# minutes on 2 CPU cores. Extra arguments go to the train CLI, e.g. --gin.TRAIN_STEPS=10000.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_DIR=${1:-/tmp/demo_pretrain}
shift || true
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/python -m prompt_tuning_jax.train \
  --gin_file=demo/t5_1_1_demo.gin --gin_file=runs/pretrain.gin --gin_file=demo/pretrain.gin \
  --gin.MODEL_DIR="'${MODEL_DIR}'" "$@"
.venv/bin/python -c \
  "import sys; from prompt_tuning_jax import demo; print('wrote', demo.export_pretrained(sys.argv[1]))" \
  "${MODEL_DIR}"
