#!/usr/bin/env bash
# Install what the project needs on this machine: the Python package with its dev extra, and the
# control-plane binaries (built from Go modules, cached outside the clone). Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# dev: linters and test tools; data: the data workload's libraries (pyarrow, boto3, tokenizers);
# train: torch + transformers for the trainer's workload tier (a large download once; pip's cache keeps it);
# tune: Optuna and its samplers' libraries for the tuner's tests (tests/unit/test_tuner_space.py, tests/workloads).
python3 -m pip install --quiet --disable-pip-version-check -e '.[dev,train,data,tune]'
bash hack/build-binaries.sh
