#!/usr/bin/env bash
# On the GPU machine, as one call of under 5 minutes (after benchmarks/gpu/prepare.sh here, carry .bench):
#   ours vs TRL's SDFTTrainer vs our SFT on a random-weight Qwen2-0.5B-shaped model, bf16, batch 16, 256 new tokens;
#   ours (SDFT, SFT) on the Qwen2-1.5B shape; then TRL's anchor script, the baseline, in the same call.
# Results land in $OUT (throughput.json, logs); merge the JSON rows into reports/throughput.json afterwards.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .bench/whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TRL_EXPERIMENTAL_SILENCE=1
OUT=${OUT:-/tmp/sdft-bench-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
BENCH=(python3 benchmarks/step_throughput.py --tokenizer .bench/tok --new-tokens 256 --report "$OUT/throughput.json")
timeout 150 "${BENCH[@]}" --model qwen2-0.5b-shape --batch 16 --steps 3 --warmup 1 --rounds 1 2>&1 | tee "$OUT/bench-0.5b.log"
timeout 70 "${BENCH[@]}" --model qwen2-1.5b-shape --batch 16 --steps 2 --warmup 1 --rounds 1 --impls ours_sdft,ours_sft \
  2>&1 | tee "$OUT/bench-1.5b.log"
if [ -f .bench/trl_anchor.py ]; then
  timeout 70 python3 .bench/trl_anchor.py --tok .bench/tok --bs 16 --new 256 --steps 4 2>&1 | grep '^{' | tee "$OUT/anchor.log"
fi
