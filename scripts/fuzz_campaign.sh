#!/usr/bin/env bash
# The hostile-input fuzz campaign (issue 19): tests/test_fuzz.py with N cases per class (default 300; the test
# suite's default run tries 10), then the tally of cases tried and how each ended, by class.
#   bash scripts/fuzz_campaign.sh [N] [TALLY.json]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-300}"
TALLY="${2:-$(mktemp --suffix=.json)}"
PY="${PYTHON:-.venv/bin/python}"
CUNET_FUZZ_EXAMPLES="$N" CUNET_FUZZ_TALLY="$TALLY" "$PY" -m pytest -q -p no:cacheprovider tests/test_fuzz.py
echo "tally ($N cases per test; every case ended in success or a one-line error, nothing else changed):"
cat "$TALLY"
