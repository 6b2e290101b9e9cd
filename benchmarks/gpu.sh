#!/usr/bin/env bash
# The training-step benchmark on one GPU at BERT-base shapes (12 layers x 768,
# batch 32 x 128), on the JAX and torch backends, with HF PEFT's LoRA and
# FourierFT timed in the same torch run, then one adapted BERT-base layer
# (forward + backward) the same way. Needs no TensorFlow. Needs keras,
# keras-hub, jax[cuda], torch (CUDA), transformers and peft; about 5 minutes.
# Writes JSON files to $OUT (default benchmarks/gpu-results).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-benchmarks/gpu-results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt" || true
KERAS_BACKEND=jax python benchmarks/train_step.py --backend jax --shapes bert-base \
  --quick --output "$OUT/train_jax.json"
KERAS_BACKEND=torch python benchmarks/train_step.py --backend torch --shapes bert-base \
  --quick --with-peft --no-memory --output "$OUT/train_torch.json"
KERAS_BACKEND=jax python benchmarks/adapter_layer.py --backend jax --shapes bert-base \
  --quick --output "$OUT/adapter_layer_jax.json"
KERAS_BACKEND=torch python benchmarks/adapter_layer.py --backend torch \
  --shapes bert-base --quick --with-peft --output "$OUT/adapter_layer_torch.json"
