#!/usr/bin/env bash
# One short run on a fresh GPU machine (jax, flax, optax, chex, orbax preinstalled; no network):
# the search step of every main estimator at the paper's size and at the tiny preset's.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # device peak memory is then the step's own
# jax 0.11.2 on an H200 aborts compiling the search step in a Triton GEMM fusion
# (triton_tiling_propagation.cc: "Check failed: subdim_size_accumulator == dim_size")
export XLA_FLAGS="--xla_gpu_enable_triton_gemm=false ${XLA_FLAGS:-}"
{ python -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } 2>&1 | tee "$OUT/devices.txt"
python -m benchmarks.search_step --preset paper --estimators exact,first_order,finite_difference \
  --steps 10 --timeout 420 --out "$OUT/search_step_paper.json" 2>&1 | tee "$OUT/search_step_paper.txt"
python -m benchmarks.search_step --preset tiny --estimators first_order,exact \
  --steps 10 --timeout 150 --out "$OUT/search_step_tiny.json" 2>&1 | tee "$OUT/search_step_tiny.txt"
