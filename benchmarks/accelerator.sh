#!/usr/bin/env bash
# Accelerator benchmark: T5 v1.1 small and base bf16 training MFU at 512 -> 114
# tokens, and greedy decoding tokens/s, in one run of at most ~8 minutes.
#
# Runs on the accelerator machine's stock image (Python 3.12, JAX with CUDA,
# flax, optax, orbax-checkpoint; no TensorFlow, seqio or gin-config): the model
# and train-step code import neither TensorFlow nor seqio, and gin-config (pure
# Python) is installed from a wheel carried in $GIN_WHEEL_DIR when it is missing
# (`pip download gin-config==0.5.0 --no-deps -d wheels/` on a machine with the
# package index, then carry wheels/).
#
#   bash benchmarks/accelerator.sh                      # small, base
#   SIZES=tiny TRAIN_BATCH=8 DECODE_BATCH=8 STEPS=2 bash benchmarks/accelerator.sh  # CPU check
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SIZES=${SIZES:-small,base}
STEPS=${STEPS:-20}
TRAIN_BATCH=${TRAIN_BATCH:-64}
DECODE_BATCH=${DECODE_BATCH:-64}
OUT=${OUT:-accelerator_results.jsonl}
KERNEL=${ATTENTION_KERNEL:-jax}  # jax.nn.dot_product_attention (cuDNN where it applies)
SCAN=${SCAN_LAYERS:+--scan_layers}  # SCAN_LAYERS=1: T5X's scan_layers (compile time)
if ! "$PY" -c 'import gin' 2>/dev/null; then
  "$PY" -m pip install --no-index --no-deps --find-links "${GIN_WHEEL_DIR:-wheels}" gin-config
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== training (bf16 activations, fp32 parameters, Adafactor), ${SIZES}, 512 -> 114"
timeout 420 "$PY" benchmarks/train_throughput.py --sizes="$SIZES" --dtype=bfloat16 \
  --batch_size="$TRAIN_BATCH" --inputs=512 --targets=114 --steps="$STEPS" --attention_kernel="$KERNEL" $SCAN --json="$OUT"
echo "== greedy decoding, ${SIZES}, 512 -> 114"
timeout 240 "$PY" benchmarks/decode_throughput.py --sizes="$SIZES" --dtype=bfloat16 \
  --batch_size="$DECODE_BATCH" --inputs=512 --targets=114 --repeats=3 --attention_kernel="$KERNEL" $SCAN --json="$OUT"
echo "results: $OUT"
