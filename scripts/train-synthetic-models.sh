#!/usr/bin/env bash
# Trains prostate-lesion-synthetic (models/prostate-lesion-synthetic), the small lesion model
# the prostate tests run, with `lightbox models train-synthetic` on the real prostate ADC series
# in the test data (synthetic lesions inserted; see the model card). Not for clinical use.
# Training is deterministic for a recipe; the result is cached by the hash of the recipe's
# source files, so it runs once per recipe change (about 10 minutes on 2 CPU cores).
#   LIGHTBOX_CACHE (default ~/.cache/lightbox), LIGHTBOX_BIN (default: cargo run),
#   LIGHTBOX_TEST_DATA (default ../shared/data), LIGHTBOX_SYNTHETIC_STEPS (default 1500).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${LIGHTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lightbox}
data=${LIGHTBOX_TEST_DATA:-../shared/data}
steps=${LIGHTBOX_SYNTHETIC_STEPS:-1500}
name=prostate-lesion-synthetic
adc="$data/dcmqi_data/prostate_adc_QIN-PROSTATE-01-0001"
if [ ! -d "$adc" ]; then
  echo "models: $name needs the prostate ADC series at $adc (LIGHTBOX_TEST_DATA)" >&2
  exit 1
fi
# The recipe: the code that makes the data, the network and the training, and the step count.
recipe=$( (cat crates/lightbox-ai/src/train.rs crates/lightbox-ai/src/nnunet.rs \
  crates/lightbox-analysis/src/synthetic.rs crates/lightbox-workflow/src/synthetic_model.rs; echo "$steps") \
  | sha256sum | cut -c1-16)
out="models/$name"
if [ -f "$out/model.safetensors" ] && [ "$(cat "$out/.recipe" 2>/dev/null)" = "$recipe" ]; then
  echo "models: $name is trained (recipe $recipe)"
  exit 0
fi
cached="$cache/$name-$recipe"
if [ ! -f "$cached/model.safetensors" ]; then
  echo "models: training $name ($steps steps, recipe $recipe); about 10 minutes on 2 CPU cores"
  rm -rf "$cached.partial"
  mkdir -p "$cached.partial"
  if [ -n "${LIGHTBOX_BIN:-}" ]; then
    "$LIGHTBOX_BIN" models train-synthetic --adc "$adc" --steps "$steps" --evaluate 0 --models "$cached.partial"
  else
    cargo run --quiet --locked -p lightbox-cli -- models train-synthetic --adc "$adc" --steps "$steps" \
      --evaluate 0 --models "$cached.partial"
  fi
  rm -rf "$cached"
  mv "$cached.partial/$name" "$cached"
  rm -rf "$cached.partial"
fi
mkdir -p "$out"
cp "$cached/model.safetensors" "$cached/model.toml" "$out/"
echo "$recipe" > "$out/.recipe"
echo "models: $name installed in $out (recipe $recipe)"
