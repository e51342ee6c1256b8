#!/usr/bin/env bash
# GPU check in one go (about 5-8 minutes on one H100-class GPU): the CUDA tests, then
# benchmarks/gpu_train.py (tokens/s, peak memory, MFU vs the GPU's dense bf16 peak) with SDPA
# and with eager attention, on MiniLM and (if given) a BERT-base folder.
#
#   bash benchmarks/gpu_check.sh [BERT_BASE_DIR]      # results under ${OUT:-gpu-check}/
#
# Without CUDA every step skips cleanly (pytest -m gpu skips, gpu_train.py exits 0).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
"$PY" - <<'PY' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
PY
timeout 240 "$PY" -m pytest -q -m gpu tests 2>&1 | tee "$OUT/pytest_gpu.txt" || status=1
MINILM=$("$PY" -c "from benchmarks.common import minilm_path; print(minilm_path() or '')")
models=()
[ -n "$MINILM" ] && models+=("$MINILM")
[ $# -ge 1 ] && models+=("$1")
for model in "${models[@]}"; do
  tag=$(basename "$(dirname "$model")")-$(basename "$model")
  for attn in sdpa eager; do
    timeout 150 "$PY" -m benchmarks gpu_train "$model" --attn "$attn" \
      --batch-sizes 64,256,1024,4096 --max-length 32 --steps 10 \
      --json "$OUT/train_${tag}_${attn}.json" 2>&1 | tee "$OUT/train_${tag}_${attn}.txt" \
      || status=1
  done
done
echo "gpu_check: done (status $status); results in $OUT/"
exit $status
