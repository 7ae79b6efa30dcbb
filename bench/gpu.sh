#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one call, on a machine with torch but no Ray (the core runs alone):
#   bench/gpu.sh [OUTDIR]        # each step's output goes to OUTDIR/<step>.txt (default: $OUT or bench-gpu)
#   STEPS="epoch-resnet9 throughput" bench/gpu.sh    # only those steps
# Each step has its own time limit (together 570 s, under the device tool's 600 s per call), so one that
# runs long does not take the others down with it;
# the scripts print their rows as they finish, so a step cut off still shows what it measured.
set -u
out=${1:-${OUT:-bench-gpu}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"

step() {  # step NAME SECONDS SCRIPT ARGS...
    local name=$1 limit=$2
    shift 2
    [[ " ${STEPS:-training epoch-resnet9 epoch-mnist epoch-cifar throughput head} " == *" $name "* ]] || return 0
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$python" "$@" >"$out/$name.txt" 2>&1
    echo "exit $?" >>"$out/$name.txt"
    grep -v Warning "$out/$name.txt" | tail -n 30
}

# The paper preset, one trial at a time, on generated images of the real data sets' sizes.
paper=(bench/epoch.py --preset paper --epochs 2)
mnist=synthetic:1x28x28:60000:10000
cifar=synthetic:3x32x32:50000:10000

step training 120 bench/training.py
step epoch-resnet9 150 "${paper[@]}" arch=resnet9 dataset=$cifar
step epoch-mnist 60 "${paper[@]}" arch=mnist_conv3 dataset=$mnist
step epoch-cifar 60 "${paper[@]}" arch=cifar_conv4 dataset=$cifar
step throughput 120 bench/throughput.py
# The head's time per recipe (generated images: the fit figures mean nothing here, only the seconds).
step head 60 bench/head.py --dataset $mnist --train-epochs 1
