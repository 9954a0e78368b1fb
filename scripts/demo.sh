#!/usr/bin/env bash
# The README's first command: sets up ./.venv (scripts/setup_env.sh) unless it already has the package, then
# runs the offline demo, which prompt-tunes the packaged small T5 1.1 and prints what it learned. Arguments go
# to the demo, e.g. --fresh or --model_finetune; see `.venv/bin/python -m prompt_tuning_jax.demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Skipping a finished setup keeps re-runs offline (setup_env.sh asks PyPI for upgrades).
if ! .venv/bin/python -c "import prompt_tuning_jax" 2>/dev/null; then
  bash scripts/setup_env.sh
fi
exec .venv/bin/python -m prompt_tuning_jax.demo "$@"
