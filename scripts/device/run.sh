#!/bin/bash
# One borrowed-GPU session (see scripts/device/prepare.py for the payload), run from the repository root:
#   run(command="bash scripts/device/run.sh", carry=[".device"], timeout_s=600)   with bundle/models/model.ts moved aside
# MODE=parity: bench/cuda_parity.py (the release model's stages on CPU and on CUDA, ~1.5 min).
# MODE=finetune: `monai-cir evaluate --methods $METHODS` (default: composed composed_finetuned composed_late_fusion
# composed_finetuned_late_fusion; the fine-tuned network is shared by the two methods that use it), the folds side by
# side, EPOCHS epochs. Seen on an H200 with 16 cores (2026-12-04): one fold alone 152 s for 6 epochs (head 62 s, 11 s an
# epoch); ten processes side by side were CPU-bound (head 190 s, 25 s an epoch): run at most five. Five folds
# of 10 epochs side by side: 340-364 s each after ~130 s of parity bench and cache (2026-12-04, second run).
# Every figure lands in $OUT as it is made; the log is $OUT/log.txt (8 files come back at most).
# git on that machine: HEAD there can be stale (twice it was the session's first HEAD, not the commit the tree was
# copied from), and the tree is dirty since bundle/models/model.ts must stay behind (64 MiB). So the run first
# records the git tree of the working tree as copied ($OUT/code.txt); here, the same tree of a commit is
#   GIT_INDEX_FILE=/tmp/i git read-tree C && GIT_INDEX_FILE=/tmp/i git rm -q --cached bundle/models/model.ts && GIT_INDEX_FILE=/tmp/i git write-tree
# and equal hashes mean the run ran commit C's code exactly (checked 2026-12-04: tree 7f526d4 = cdad6e3 without
# model.ts, while HEAD there said 8e1a6e5). Say which in the results' provenance. Leave a third of the deadline
# spare: fold processes took 270-289 s in one run and over 345 s in the next, same commands, and the second lost
# everything at its deadline (evaluate then wrote a fold's methods only at its end; it now writes each method
# as soon as its folds are done, so a cut run keeps what it finished).
set -u
T0=$(date +%s); DEADLINE=${DEADLINE:-540}; EPOCHS=${EPOCHS:-10}; MODE=${MODE:-finetune}
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
rm -f /tmp/run-index
{ echo "git HEAD there: $(git rev-parse HEAD 2>&1)"
  echo "working tree as copied (tracked + untracked, not ignored): tree $(GIT_INDEX_FILE=/tmp/run-index git add -A 2>&1 >/dev/null; GIT_INDEX_FILE=/tmp/run-index git write-tree 2>&1)"; } | tee "$OUT/code.txt"
SITE=/tmp/site
[ -d .device/payload ] || { echo "no .device/payload: run scripts/device/prepare.py here and carry .device"; exit 2; }
$PY -m pip install -q --no-index --no-deps --no-compile --target $SITE .device/payload/wheels/*.whl || exit 1
$PY scripts/device/unpack.py $SITE || exit 1
export PYTHONPATH=$SITE:$PWD MONAI_CIR_DATA=$PWD/.device/payload/data MONAI_CIR_CACHE=/tmp/cir-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch, timm, transformers, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'transformers', transformers.__version__, 'monai', monai.__version__)"
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
if [[ $MODE == *parity* ]]; then
  timeout -k 5 $(( $(left) - 20 )) $PY bench/cuda_parity.py --skip-encoder-check --queries ${QUERIES:-32} --library ${LIBRARY:-256} --out $OUT/cuda_parity.json
  echo "== parity done at $(( $(date +%s) - T0 )) s"
fi
if [[ $MODE == *finetune* ]]; then
  # the feature cache once, then the folds side by side (each merges into the same results file under a lock)
  timeout -k 5 $(( $(left) - 20 )) $PY -m monai_cir evaluate --methods frozen_multilevel_cosine --folds 0 --out /tmp/cache_warm.json > /tmp/cache.log 2>&1
  echo "== cache done at $(( $(date +%s) - T0 )) s"; tail -2 /tmp/cache.log
  FROZEN_BN=${FROZEN_BN:-true}    # false: BatchNorm statistics follow the augmented batches (the old default)
  LR_SCALE=${ENCODER_LR_SCALE:-0.1}   # the encoders' lr as a share of the head's (FINETUNED_DEFAULTS: 0.1)
  OPTS="{\"composed_finetuned\": {\"epochs\": $EPOCHS, \"num_workers\": ${WORKERS:-2}, \"frozen_batchnorm\": $FROZEN_BN, \"encoder_lr_scale\": $LR_SCALE, \"progress\": false}}"
  METHODS=${METHODS:-composed composed_finetuned composed_late_fusion composed_finetuned_late_fusion}
  PIDS=""
  for k in ${FOLDS:-0 1 2 3 4}; do
    OMP_NUM_THREADS=2 timeout -k 5 $(( $(left) - 15 )) $PY -m monai_cir evaluate --methods $METHODS --folds $k --method-options "$OPTS" --out $OUT/derm7pt_cv_composed_finetuned_gpu_${EPOCHS}ep_bn${FROZEN_BN}_enclr${LR_SCALE}.json > /tmp/fold$k.log 2>&1 &
    PIDS="$PIDS $!"
  done
  # the fold processes by pid: a bare `wait` also waits for the `exec > >(tee ...)` above, which never ends
  # (on 2026-12-04 the five folds were done at ~500 s and the call then sat to its 600 s limit)
  wait $PIDS
  for k in ${FOLDS:-0 1 2 3 4}; do echo "== fold $k"; grep -vE "it/s|s/it|Epoch\[|^\s*$" /tmp/fold$k.log | tail -8; done > $OUT/folds.log
  tail -20 $OUT/folds.log; cat $OUT/*.md 2>/dev/null
fi
echo "== all done at $(( $(date +%s) - T0 )) s"
