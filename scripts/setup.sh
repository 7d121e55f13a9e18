#!/usr/bin/env bash
# Create .venv and install medkor with its test tools. Safe to run again.
# torch is installed first at a pinned version so that the range in pyproject.toml
# is already met and pip does not pull a different (multi-GB) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${MEDKOR_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"
echo "medkor installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
