#!/usr/bin/env bash
# Creates .venv-qtt: a separate virtualenv for quicktunetool 0.0.4 (the optimizer QTT-SEG uses),
# which pins numpy<2 and scikit-learn==1.5.0 and so cannot share the project's .venv. The replay
# benchmark's "quicktunetool" method runs qtt_ray/bench/quicktunetool_adapter.py in it.
#
# torch is installed FIRST (the CPU wheel; TORCH_SPEC or a local wheel in TORCH_WHEEL_DIR), so
# nothing pulls a multi-GB CUDA build. quicktunetool itself goes in with --no-deps: its declared
# torchvision/fimm/commitizen are only needed by its image tuner, which the adapter never imports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QTT_VENV:-$ROOT/.venv-qtt}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip setuptools wheel
if compgen -G "$TORCH_WHEEL_DIR/torch-2.13.0*.whl" > /dev/null; then
    "${PIP[@]}" "$TORCH_WHEEL_DIR"/torch-2.13.0*.whl
else
    # the CPU index; plain PyPI would bring the CUDA build (GBs)
    "${PIP[@]}" "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" "numpy<2" "scikit-learn==1.5.0" "pandas>=2.0.0" "ConfigSpace>=1.2.0" \
    "gpytorch>=1.9.0" "pyyaml>=6.0.1" "tqdm>=4.66.0" scipy
"${PIP[@]}" --no-deps "quicktunetool==0.0.4"
"$VENV/bin/python" -c "import importlib.util, sys; \
spec = importlib.util.find_spec('qtt'); sys.exit(0 if spec else 1)"
touch "$VENV/.installed"
echo "quicktunetool ready in $VENV"
