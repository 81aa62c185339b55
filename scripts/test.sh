#!/usr/bin/env bash
# Install everything and run the test suite (this is what .ci/run calls). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/install_system_tools.sh || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ulimit -s 32768 2>/dev/null || true   # holoscan (imported by monai when the deploy SDK is present) wants a big stack
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi
exit $rc
