#!/usr/bin/env bash
# Create .venv (if missing) and install surgeon with its test extras. Idempotent.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
# transformers (the "hf" extra) is small and runs on this torch: its tests run in CI. The other
# model libraries need torchvision (a 5.5 GB CUDA pair here): see README, "Real libraries".
.venv/bin/python -m pip install -q -c scripts/constraints-cpu.txt -e ".[test,hf]"
.venv/bin/python -c "import torch, onnxruntime, networkx, surgeon, surgeon_models" 
