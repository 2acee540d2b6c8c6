#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu_check.sh needs on a GPU machine that cannot reach
# the network: the facenet-pytorch wheel (the detector's weights ship in it; that machine has torch,
# torchvision, timm, pandas, pyarrow, rich and typer but not facenet-pytorch) in .whl/, and the
# FER2013+FER+ benchmark as .bench/fer.tgz. Both folders are git-ignored; name them in the device
# tool's `carry`.
#
#   bash benchmarks/gpu_carry.sh            # or: make gpu-carry
#   PYTHON=/path/to/python SHARED=../shared bash benchmarks/gpu_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SHARED=${SHARED:-../shared}
FACENET=${FACENET:-facenet-pytorch==2.5.3}   # the version the test suite runs against here

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n 2,10p "$0"; exit 0; fi
mkdir -p .whl .bench
rm -f .whl/facenet_pytorch-*.whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$FACENET"
if [ ! -f "$SHARED/benchmarks/fer2013-ferplus/train/labels.csv" ]; then
    echo "no FER benchmark at $SHARED/benchmarks/fer2013-ferplus (set SHARED=...)" >&2; exit 1
fi
tar czf .bench/fer.tgz -C "$SHARED/benchmarks" fer2013-ferplus
du -sh .whl .bench
echo "carry: [\".whl\", \".bench\"]; the device command: bash benchmarks/gpu_check.sh"
