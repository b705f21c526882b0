#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA device: the GPU test tier (the tiny
# workflow under accelerator: gpu against the CPU run, the step benchmarks on the GPU) and
# each backbone's pretraining and fine-tuning step against plain MatGL on the GPU.
#   tools/gpu_check.sh [OUT]      (OUT: where the results go; default gpu-check/)
# Writes OUT/pytest.txt, OUT/bench_<stage>_<backbone>.txt and OUT/summary.txt; exits 1
# if a test fails or no CUDA device is visible.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
py=.venv/bin/python
if ! $py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to torch: nothing to check" | tee "$out/summary.txt"
  exit 1
fi
status=0
$py -m pytest -q -m gpu -p no:cacheprovider > "$out/pytest.txt" 2>&1 || status=1
for backbone in megnet m3gnet tensornet; do
  for stage in pretrain finetune; do
    $py "benchmarks/bench_$stage.py" --device cuda --threads 1 --batch 128 --n 1000 --backbone "$backbone" \
      > "$out/bench_${stage}_${backbone}.txt" 2>&1 || status=1
  done
done
{
  $py -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
  git rev-parse --short HEAD | sed 's/^/commit: /'
  tail -n 1 "$out/pytest.txt"
  for f in "$out"/bench_*.txt; do echo "== $(basename "$f" .txt)"; grep -E "x$" "$f"; done
} > "$out/summary.txt"
cat "$out/summary.txt"
exit $status
