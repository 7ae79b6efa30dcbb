#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one call, on a machine with torch but no Ray (the core runs alone):
#   bench/gpu.sh [OUTDIR]        # each script's table goes to OUTDIR/<name>.txt (default: $OUT or bench-gpu)
#   STEPS="epoch throughput" bench/gpu.sh    # only those steps
# Each step has its own time limit, so one that runs long does not take the others down with it.
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
    [[ " ${STEPS:-training epoch throughput} " == *" $name "* ]] || return 0
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$python" "$@" >"$out/$name.txt" 2>&1
    echo "exit $?" >>"$out/$name.txt"
    tail -n 40 "$out/$name.txt"
}

step training 120 bench/training.py
step epoch 200 bench/epoch.py --preset paper --epochs 2 \
    dataset=synthetic:1x28x28:60000:10000,synthetic:3x32x32:50000:10000,synthetic:3x32x32:50000:10000
step throughput 100 bench/throughput.py
