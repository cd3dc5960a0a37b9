#!/usr/bin/env bash
# Makes the nnU-Net v1 fixtures in tests/fixtures/parity with nnU-Net v1's own code (see
# nnunet_v1.py). A one-off, not part of `make test`: PyTorch and nnunet 1.7.1 from PyPI go into
# a virtual environment outside the clone (about 6 GB), and the tests read what it wrote.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${LIGHTBOX_REFERENCE_VENV:-/var/tmp/lightbox-nnunet-v1-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch "nnunet==1.7.1"
fi
"$venv/bin/python" scripts/reference/nnunet_v1.py tests/fixtures/parity
