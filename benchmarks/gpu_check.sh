#!/usr/bin/env bash
# The first thing to run whenever a GPU machine is available (issue 19): the CUDA-marked tests,
# then bench_prepare, bench_train, bench_knn and bench_label_noise on CUDA at sizes that end
# within about 8 minutes of GPU time in all (each step has its own time limit, so one slow or
# failing step cannot eat the others' time). Results go to $OUT (the device tool's output folder,
# which brings back at most 8 files; ./gpu-out when it is unset): check.log (every step's output),
# prepare.json, train.json, train_compile.json, knn.json, label_noise.json.
#
# Here, once:   bash benchmarks/gpu_carry.sh     (.whl/ with facenet-pytorch, .bench/fer.tgz)
# There:        bash benchmarks/gpu_check.sh     (device tool: carry [".whl", ".bench"])
#               STEPS="knn train" bash benchmarks/gpu_check.sh   (only those steps, e.g. a rerun)
#
# The machine has torch, torchvision, timm, pandas, pyarrow, rich, typer and pytest, and no
# network: facenet-pytorch comes from .whl/ and the FER2013+FER+ data from .bench/fer.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n 2,15p "$0"; exit 0; fi
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/check.log"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
STEPS=" ${STEPS:-tests prepare train train_compile knn label_noise} "  # e.g. STEPS="knn train" to rerun two
step() {  # step NAME SECONDS CMD...: run with a time limit, keep going whatever it returns
    local name=$1 limit=$2; shift 2
    case "$STEPS" in *" $name "*) ;; *) say "skip $name (not in STEPS)"; return 0 ;; esac
    say "start $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "end $name rc=$rc after $((SECONDS - t0))s"
}

say "git $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" >>"$LOG" 2>&1

SITE=/tmp/fercure-site
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl >>"$LOG" 2>&1 \
        || say "wheel install failed (the detector tests and bench_prepare need facenet-pytorch)"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
DATA=/tmp/fercure-bench/fer2013-ferplus
if [ -f .bench/fer.tgz ]; then
    mkdir -p /tmp/fercure-bench && tar xzf .bench/fer.tgz -C /tmp/fercure-bench
else
    say "no .bench/fer.tgz: the benchmarks that read FER2013 will fail (run benchmarks/gpu_carry.sh here first)"
fi

# 1. the CUDA-marked tests, and the compiled fit against an eager one (slow on a 2-core CPU)
FERCURE_SLOW_TESTS=1 step tests 110 "$PY" -m pytest -q -rs -p no:cacheprovider -m "cuda or slow" tests/test_cuda.py tests/test_gpu_ready.py
# 2. detection throughput (fercure's batched MTCNN vs facenet-pytorch's)
step prepare 60 "$PY" benchmarks/bench_prepare.py --device cuda --n 512 --n-single 32 --n-wide 32 --data "$DATA" --out "$OUT/prepare.json"
# 3. training throughput and a short full-data run (eager), then the same with --compile
step train 85 "$PY" benchmarks/bench_train.py --device cuda --data "$DATA" --epochs 8 --out "$OUT/train.json"
step train_compile 50 "$PY" benchmarks/bench_train.py --device cuda --data "$DATA" --epochs 3 --compile --skip-reference --out "$OUT/train_compile.json"
# 4. the kNN signal: 1M exactly (all queries), 10M timed on 32,768 queries and scaled
step knn 50 "$PY" benchmarks/bench_knn.py --device cuda --n 1000000 10000000 --queries 32768 --old-up-to 0 --chunk 8192 --key-block 262144 --out "$OUT/knn.json"
# 5. label-noise detection on all of FER2013 train at 96 px, the default chain only, 8 epochs
step label_noise 90 "$PY" benchmarks/bench_label_noise.py --device cuda --data "$DATA" --scale full --steps fercure --epochs 8 --out "$OUT/label_noise.json"
say "done; results in $OUT"
ls -la "$OUT" >>"$LOG"
rm -f "$OUT"/*.partial.json "$OUT"/*.lock  # at most 8 files come back
