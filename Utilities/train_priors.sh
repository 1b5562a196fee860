#!/usr/bin/env bash
# The priors model's training run, one command on any machine (CPU or a CUDA GPU; torchrun not needed):
# starts results/training/priors-ch1 or resumes it where its committed checkpoint stands, with the same
# plan, schedule and random state. Stop it any time (Ctrl-C): it resumes from its last checkpoint
# (every 250 iterations). Needs the SkullFix training data (DATA, default ../shared/data/skullfix).
#
#   Utilities/train_priors.sh            # CPU: about 0.6 s per iteration on 2 quiet cores
#   DATA=/path/to/skullfix Utilities/train_priors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=results/training/priors-ch1
DATA=${DATA:-../shared/data/skullfix}
CACHE=${CACHE:-training-cache}
PYTHON=${PYTHON:-.venv/bin/python}
resume=()
[ -f "$RUN/checkpoint.pt" ] && resume=(--resume)
exec "$PYTHON" -m SparseImplantLib.train --data "$DATA" --cache "$CACHE" -o "$RUN" "${resume[@]}" \
  --name skullfix-priors-ch1-2mm --init-model skullfix-ch1-2mm --priors \
  --train-cases 000-044 --val-cases 045-049 --iterations 30000 --lr 5e-4 --seed 7 \
  --log-every 50 --val-every 1000 --checkpoint-every 250 "$@"
