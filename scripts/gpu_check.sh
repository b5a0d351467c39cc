#!/usr/bin/env bash
# The GPU checks for the first session that is lent a device (docs/benchmarks.md, "On a GPU"):
# bf16 against fp32 speed, measured against estimated memory, and the GPU-path tests, in one
# call of about 5 minutes. Ray (79 MB) and MLflow cannot travel within a call's 64 MiB, so
# nothing here needs them.
#
#   here:    bash scripts/device_kit.sh              # .devkit/: what the device image lacks
#   device:  run(command="bash scripts/gpu_check.sh", carry=[".devkit"], timeout_s=540)
#
# Logs go to $OUT (what the device tool brings back; ./gpu-check elsewhere). To try the kit on
# a CPU first: QTT_CHECK_DEVICE=cpu QTT_CHECK_MODEL=micro MEMORY_MODELS=micro \
#   PYTHON=/path/to/python3.12 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${QTT_CHECK_DEVICE:-cuda}
MODEL=${QTT_CHECK_MODEL:-tiny:random}
SITE=/tmp/qtt-devkit-site
[ -d .devkit/wheels ] || { echo "no .devkit: run scripts/device_kit.sh here first"; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .devkit/wheels/*.whl || exit 2
export PYTHONPATH="$SITE:$PWD/.devkit/src:$PWD" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE \
    NO_ALBUMENTATIONS_UPDATE=1  # no network there

step() {  # name, command...: run it with a time limit, its output also in $OUT/name.log
    local name=$1
    shift
    echo "== $name: $*"
    timeout "${STEP_LIMIT:-240}" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

step env sh -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
    $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())'"
step throughput "$PY" -m qtt_ray.bench throughput --model "$MODEL" --device "$DEVICE" \
    --num-images 40 --epochs 2 --precision fp32 bf16 --skip-startup --out "$OUT"
# shellcheck disable=SC2086  # a list of model names
step memory "$PY" -m qtt_ray.bench memory --models ${MEMORY_MODELS:-tiny large} \
    --batch-sizes 1 4 --precisions fp32 bf16 --device "$DEVICE" --out "$OUT"
step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py \
    tests/test_model_prefetch.py tests/test_preflight.py tests/test_bench_memory.py
