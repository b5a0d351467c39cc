#!/usr/bin/env bash
# Build .devkit/: what the lent GPU machine (the `device` tool; Python 3.12, torch, peft,
# gpytorch, pyarrow there, no package index) lacks to run scripts/gpu_check.sh: CPython 3.12
# wheels of the pure-Python and compiled packages below, at the versions of this checkout's
# .venv, and the sam2 package itself (pure Python + its configs, no CUDA extension).
# Ray (79 MB) and MLflow do not fit a call's 64 MiB, so the check runs the parts without them.
#
#   bash scripts/device_kit.sh     # here, after `make install`; then the device run carries .devkit
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
KIT=.devkit
rm -rf "$KIT" && mkdir -p "$KIT/wheels" "$KIT/src"

# what the device image lacks (checked against /work/.library/device/KINDS.md). Pure-Python
# packages are copied from .venv as they are installed (some exist only as source archives);
# the compiled ones come as CPython 3.12 wheels of the same versions
PURE=(sam2 hydra omegaconf antlr4 iopath albumentations albucore pydantic annotated_types
      typing_inspection)
COMPILED=(pydantic-core simsimd stringzilla)
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for package in "${PURE[@]}"; do
    cp -r "$SITE/$package" "$KIT/src/"
done
find "$KIT/src" -name __pycache__ -prune -exec rm -rf {} +
SPECS=()
for name in "${COMPILED[@]}"; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    SPECS+=("$name==$version")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$KIT/wheels" "${SPECS[@]}"
"$PY" -m pip list --format=freeze > "$KIT/VERSIONS"
du -sh "$KIT"
