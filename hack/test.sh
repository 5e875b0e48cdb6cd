#!/usr/bin/env bash
# The test command (README, .ci/run): set up, lint, type-check, layer-check, CRD drift, then the
# unit and cluster tiers. Any failure, and pytest collecting nothing (exit 5), fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash hack/setup.sh
echo "== ruff";          ruff check . && ruff format --check .
echo "== mypy";          mypy
echo "== import-linter"; lint-imports
echo "== crd drift";     leptonctl crds --check
echo "== pytest";        python3 -m pytest "${@:-tests}"
