#!/usr/bin/env bash
# One short run (under 10 minutes) on a fresh GPU machine: jax, flax, optax, chex and orbax
# preinstalled, no network. Checks fidelity of the GPU's lowering (the reference file in
# float32; float64 semantics are the CPU test suite's job), then times the paper-size search step (exact, first order, finite difference)
# and the paper-size training step, and prints the tables. Results land in $OUT.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
# PRESET=tiny runs the same script at test size (e.g. to try it on a CPU).
set -u
OUT=${OUT:-/tmp/gpu_check}
PRESET=${PRESET:-paper}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # device peak memory is then the step's own
# jax 0.11.2 on an H200 aborts compiling the search step in a Triton GEMM fusion
# (triton_tiling_propagation.cc: "Check failed: subdim_size_accumulator == dim_size")
export XLA_FLAGS="--xla_gpu_enable_triton_gemm=false ${XLA_FLAGS:-}"
{ python -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; } \
  2>&1 | tee "$OUT/devices.txt"
for dtype in float32; do
  timeout 180 python -m experiments.verify_reference tests/data/quark0_reference.npz \
    --dtype $dtype --out "$OUT/fidelity_$dtype.json" > /dev/null 2> "$OUT/fidelity_$dtype.err"
  python - "$OUT/fidelity_$dtype.json" $dtype <<'EOF' | tee -a "$OUT/fidelity.txt"
import json, sys
try:
  r = json.load(open(sys.argv[1]))
except (OSError, ValueError):
  print(f'fidelity {sys.argv[2]}: no report (see {sys.argv[1][:-5]}.err)')
  sys.exit()
worst = max(q.get('rel_err', 0) / q['tol'] for q in r['quantities'].values() if 'tol' in q)
print(f"fidelity {sys.argv[2]}: {'PASS' if r['ok'] else 'FAIL'} {r['summary']}, "
      f"worst error / tolerance {worst:.2g}")
EOF
done
# the search's default at the paper's size: each cell recomputed in the backward pass
python -m benchmarks.search_step --preset "$PRESET" --estimators exact,first_order,finite_difference \
  --remat_cells --steps "$STEPS" --timeout 120 --out "$OUT/search_step_$PRESET.json" 2>&1 | tee "$OUT/search_step_$PRESET.txt"
# without remat: what the memory buys
python -m benchmarks.search_step --preset "$PRESET" --estimators exact --steps "$STEPS" --timeout 120 \
  --out "$OUT/search_step_${PRESET}_plain.json" 2>&1 | tee "$OUT/search_step_${PRESET}_plain.txt"
python -m benchmarks.train_step --preset "$PRESET" --steps "$STEPS" --timeout 60 \
  --out "$OUT/train_step_$PRESET.json" 2>&1 | tee "$OUT/train_step_$PRESET.txt"
# bf16 mixed precision (float32 master weights, alphas, BN statistics, loss)
python -m benchmarks.search_step --preset "$PRESET" --estimators exact,first_order --remat_cells \
  --compute_dtype bfloat16 --steps "$STEPS" --timeout 120 --out "$OUT/search_step_${PRESET}_bf16.json" \
  2>&1 | tee "$OUT/search_step_${PRESET}_bf16.txt"
python -m benchmarks.train_step --preset "$PRESET" --compute_dtype bfloat16 --steps "$STEPS" \
  --timeout 60 --out "$OUT/train_step_${PRESET}_bf16.json" 2>&1 | tee "$OUT/train_step_${PRESET}_bf16.txt"
