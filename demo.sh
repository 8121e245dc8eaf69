#!/usr/bin/env bash
# Set up (first run only) and run the demo: ResNet-50 at 224x224, 50% local L1 pruning.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m surgeon.demo "$@"
