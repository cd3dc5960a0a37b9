#!/usr/bin/env bash
# Installs the on-device models from their registry packages into models/ (idempotent):
#   deepbet 1.0.2 (MIT) from PyPI: its wheel is fetched once into the cache, checked against
#   its pinned sha256, and `lightbox models install deepbet` converts its two TorchScript
#   networks to safetensors, each checked against the sha256 in its model.toml.
# pip only downloads here (a registry client); nothing of Python runs Lightbox.
#   LIGHTBOX_CACHE (default ~/.cache/lightbox), LIGHTBOX_BIN (default: cargo run).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${LIGHTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lightbox}
mkdir -p "$cache"

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
