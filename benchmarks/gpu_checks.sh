#!/usr/bin/env bash
# The GPU checks of this project, in one run of about 6 minutes on a CUDA machine that has torch,
# Triton, numba, pyarrow and PyYAML but not this package installed (nor TorchRec/FBGEMM-GPU):
#
#     bash benchmarks/gpu_checks.sh [OUTPUT_DIR]      # default: benchmarks/
#
# 1. gpu_check.py: NCCL, the prefetcher, the step, device placement, the loss backends, host
#    syncs -> OUTPUT_DIR/gpu_check.json;
# 2. kernel_bench.py: the fused loss against torch eager and torch.compile, 2^10..2^28 rows
#    -> OUTPUT_DIR/kernel.md (its share of the HBM peak, and where it starts to pay).
# Each step has its own time limit; a failing step does not stop the other. Exit status: 0 when
# both ran and passed.
set -u
out=${1:-benchmarks}
mkdir -p "$out"
repo=$(cd "$(dirname "$0")/.." && pwd)
# the kernels folder importable as the installed package name
alias_dir=$(mktemp -d)
ln -s "$repo/kernels" "$alias_dir/atjt_kernels"
export PYTHONPATH="$alias_dir:$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
cd "$repo" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, triton, numba, pyarrow; print('torch', torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__, 'pyarrow', pyarrow.__version__)"

status=0
timeout 200 python3 benchmarks/gpu_check.py --output "$out/gpu_check.json" || status=1
timeout 240 python3 benchmarks/kernel_bench.py --output "$out/kernel.md" --budget-s 150 || status=1
exit $status
