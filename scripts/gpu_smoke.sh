#!/usr/bin/env bash
# GPU smoke test (one GPU, no network, < 10 minutes): builds the tiny base, measures bf16 training of full FT
# and LoRA on a ~86M random Llama and a random model of Qwen2.5-0.5B's shape (tokens/s, peak memory against the
# analytical model, MFU) and runs one evaluation of each kind.
# Usage: scripts/gpu_smoke.sh [--out DIR] [--batch N] [--steps N] [--rank R]   (see scripts/gpu_smoke.py)
# Exits non-zero with a message when no CUDA GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LORASTUDY_CACHE="${LORASTUDY_CACHE:-outputs/gpu_smoke/cache}"
exec "$PY" scripts/gpu_smoke.py "$@"
