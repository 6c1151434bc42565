#!/usr/bin/env bash
# Create (once) the virtual environment of the peer system: trl 0.11.4, the last trl with seq2seq
# PPO (PPOTrainer + AutoModelForSeq2SeqLMWithValueHead), beside the torch build detoxrl uses.
# Idempotent: a finished environment is recognised by a stamp file and left alone.
#
#   bash benchmarks/setup_trl_env.sh          # creates benchmarks/.venv-trl (gitignored)
#   PYTHON=python3.11 bash benchmarks/setup_trl_env.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV_TRL:-$HERE/.venv-trl}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.trl-env-installed"
# The pins are part of the stamp: changing them reinstalls.
TORCH_PIN="torch==2.13.0"
PEER_PINS="trl==0.11.4 transformers==4.46.3 peft==0.13.2 accelerate==1.1.1 datasets==3.1.0 rich psutil"

if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$TORCH_PIN $PEER_PINS" ]]; then
    echo "trl environment ready: $VENV"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
# torch first and pinned, so that pip takes the CPU build on this kind of machine instead of
# resolving a multi-GB CUDA build for trl's unpinned `torch` requirement.
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$TORCH_PIN"
# shellcheck disable=SC2086
"$PY" -m pip install -q $TORCH_PIN $PEER_PINS
"$PY" - <<'PY'
import torch, transformers, trl, peft, accelerate, datasets
from trl import PPOTrainer, PPOConfig, AutoModelForSeq2SeqLMWithValueHead, create_reference_model  # noqa: F401
print("torch", torch.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__,
      "| peft", peft.__version__, "| accelerate", accelerate.__version__, "| datasets", datasets.__version__)
PY
echo "$TORCH_PIN $PEER_PINS" > "$STAMP"
echo "trl environment ready: $VENV"
