#!/usr/bin/env bash
# Install what the project needs on this machine: the Python package with its dev extra, and the
# control-plane binaries (built from Go modules, cached outside the clone). Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
bash hack/build-binaries.sh
