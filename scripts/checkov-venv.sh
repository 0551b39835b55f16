#!/usr/bin/env bash
# checkov (the security checks in tests/unit/test_k8s.py) in a venv of its own: checkov 3.3.30
# pins packaging<24, networkx 2.x, cachetools 5 and python-dateutil 2.9, which would downgrade
# what vllm and torch use in .venv. Idempotent: does nothing when the pinned version is there.
set -euo pipefail
VERSION=3.3.30
VENV=${CHECKOV_VENV:-.venv-checkov}
if [ -x "$VENV/bin/checkov" ] && [ "$("$VENV/bin/checkov" --version 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
echo "==> installing checkov $VERSION into $VENV (apart from .venv: its pins would downgrade vllm's dependencies)"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "checkov==$VERSION"
