#!/usr/bin/env bash
# The GPU measurement of the performance issue, prepared to run in under 5 minutes on one
# H100 or H200 (not run in the CPU-only development session that wrote it):
#
#   bash experiments/gpu_benchmark.sh [PYTHON]        # PYTHON defaults to .venv/bin/python
#
# Transformer-big (d_model 1024, 16 heads, d_ff 4096, 6+6 layers, shared vocabulary 8,000),
# source and target length 256, bfloat16 compute with float32 parameters and Adam state,
# attention through jax.nn.dot_product_attention(implementation='cudnn') with the scale
# passed through ('xla' if cuDNN refuses the shape), dropout 0.3, nn.scan over layers.
# Sweeps the batch without and with remat, stopping each sweep at the first batch that
# does not fit, and prints each run's figures and a summary (MFU vs the 989 TFLOP/s
# dense bf16 peak of H100 SXM / H200).
set -u
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
CFG=experiments/configs/benchmark_base.py:big
BUDGET=${BUDGET:-285}               # seconds for the whole sweep
PER_RUN=${PER_RUN:-100}             # seconds for one run (compile + 2 + 8 steps)
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
export TF_CPP_MIN_LOG_LEVEL=3
LOG=$(mktemp -d)/gpu_benchmark
mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"

ATTN=cudnn
run() {  # run NAME ARGS...: 0 ok, 2 out of memory, 1 other failure
  local name=$1; shift
  local left=$((BUDGET - SECONDS))
  if (( left < 30 )); then echo "== $name: skipped (budget spent)"; return 3; fi
  local limit=$(( left < PER_RUN ? left : PER_RUN ))
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$PY" -m experiments.benchmark --config=$CFG --steps=8 \
      --config.model.attention_implementation=$ATTN "$@" >"$LOG/$name.txt" 2>&1
  local rc=$?
  grep -E "^ +(compile time|median step time|tokens/s|model FLOPs/step|achieved|ceiling|MFU|peak memory):" \
      "$LOG/$name.txt" || true
  if (( rc == 0 )); then echo "$name $(grep -E '^ +MFU:' "$LOG/$name.txt")" >>"$LOG/summary"; return 0; fi
  if grep -qiE "RESOURCE_EXHAUSTED|out of memory" "$LOG/$name.txt"; then
    echo "   -> does not fit"; echo "$name: does not fit" >>"$LOG/summary"; return 2
  fi
  tail -5 "$LOG/$name.txt"; echo "$name: failed (rc $rc)" >>"$LOG/summary"; return 1
}

# Batches (rows of 256 + 256 tokens). Without remat ~0.3 GB of activations per row.
run "b128_cudnn" --config.batch_size=128
if (( $? == 1 )); then ATTN=xla; echo "cuDNN attention failed: falling back to 'xla'"
  run "b128_xla" --config.batch_size=128; fi
for b in 192 256; do run "b${b}_$ATTN" --config.batch_size=$b || break; done
for b in 256 384 512; do
  run "b${b}_${ATTN}_remat" --config.batch_size=$b --config.model.remat=True || break
done
echo "== summary (logs in $LOG), ${SECONDS}s"
cat "$LOG/summary"
