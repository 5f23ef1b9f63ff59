#!/usr/bin/env bash
# The CUDA checks, in one run on a machine with an NVIDIA GPU (cunet-edge installed):
#   1. the gpu-marked tests (torch runner fp32/tf32/fp16 and CUDA graphs against the CPU);
#   2. bench, side by side in interleaved rounds at batch 1, 16 and 256: the unrolled model in
#      fp32, tf32 and fp16, each with and without CUDA graphs, and the torchdiffeq checkpoint;
#   3. the default training recipe on the GPU, then evaluate (FID, KID, confidence).
#
#   bash benchmarks/gpu.sh CHECKPOINT UNROLLED OUTDIR [TRAIN_SECONDS]
#
# CHECKPOINT: a trained checkpoint (its solver run through torchdiffeq); UNROLLED: the same model
# unrolled (`cunet-edge unroll CHECKPOINT --out UNROLLED`). Results: OUTDIR/gpu-b*.json, train.json,
# eval.json and logs. Each step runs even if an earlier one failed; the exit status is the first failure.
set -uo pipefail
ckpt=$1 unrolled=$2 out=$3 train_s=${4:-240}
mkdir -p "$out"
cli=(python3 -m cunet_edge)
status=0
step() { echo "== $*"; "$@" || { rc=$?; echo "== FAILED ($rc): $*"; [ $status -ne 0 ] || status=$rc; }; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step python3 -m pytest -q -p no:cacheprovider -m gpu tests

u="$unrolled@torch:cuda"
for b in 1 16 256; do
  step "${cli[@]}" bench "$u,fp32" --compare "$ckpt@torch:cuda,fp32" --compare "$u,tf32" --compare "$u,fp16" \
    --compare "$u,fp32,graphs" --compare "$u,tf32,graphs" --compare "$u,fp16,graphs" \
    --batch "$b" --sampler-steps 32 --min-seconds 1.5 --rounds 3 --json "$out/gpu-b$b.json"
done

# The default recipe (the one the README trains on the CPU), on the GPU; the time limit keeps the run bounded.
t0=$(date +%s.%N)
step timeout "$train_s" "${cli[@]}" train --dataset digits --no-progress --out "$out/digits-gpu" --json "$out/train.json"
echo "train wall $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
step "${cli[@]}" evaluate "$out/digits-gpu" --n 1000 --json "$out/eval.json"
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" = 1 ]; then
  echo "== expect a one-line refusal: --procs 2 on one GPU"
  ! "${cli[@]}" train --dataset digits --procs 2 --steps 10 --out "$out/ddp-refused" || { [ $status -ne 0 ] || status=1; }
fi
exit $status
