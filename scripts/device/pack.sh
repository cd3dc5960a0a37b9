#!/usr/bin/env bash
# Builds what the GPU machine runs (burn's wgpu backend on) and packs it, with the model weights,
# deepbet's TorchScript network (the PyTorch reference) and the test data those runs read, into
# payloads for scripts/device/check.sh, one a device call:
#   .device/all/payload.tar.xz     every step but the SPIR-V bench-ai, in one call (a device
#                                  session has 15 minutes: one machine start, one call);
#   .device/speed/payload.tar.xz   STEPS=render,aibench: the three benches, the SPIR-V one too;
#   .device/parity/payload.tar.xz  STEPS=render,parity: the test binary (parity, Dice and the
#                                  renderer's tests), the PyTorch reference and bench-render;
#   .device/tuned/payload.tar.xz   STEPS=tuned: both bench-ai builds and the T1 they read, for
#                                  the PlainConvUNet figures alone (26 MB).
# The device tool carries at most 64 MiB a call, the checkout's tracked files (9 MB) included,
# which one payload of everything (61 MB) exceeded. A call carries .gl (the Vulkan loader's
# Debian packages), .device/whl (dynamic_network_architectures' wheel) and one payload's folder;
# all stay out of git (.git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
DATA=${LIGHTBOX_TEST_DATA:-$PWD/../shared/data}
WHEEL=${LIGHTBOX_CACHE:-$HOME/.cache/lightbox}/deepbet-1.0.2-py3-none-any.whl
FEATURES=(-p lightbox-tests --features lightbox-ai/gpu)

cargo build "${FEATURES[@]}" --bins
IT=$(cargo test "${FEATURES[@]}" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-message" and m["message"]["level"] == "error":
        print(m["message"]["rendered"], file=sys.stderr)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it" and m.get("executable"):
        print(m["executable"])')
[ -x "$IT" ] || { echo "no it test binary" >&2; exit 1; }

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/target/debug/deps" "$STAGE/deepbet"
cp "$IT" "$STAGE/target/debug/deps/it"
for b in bench-ai bench-render; do cp "$TARGET/debug/$b" "$STAGE/target/debug/"; done
# bench-ai again with burn's SPIR-V compiler (feature gpu-spirv: cooperative matrices), so one
# device call compares the two ways burn reaches the GPU (issue 7).
cargo build -p lightbox-tests --features lightbox-ai/gpu-spirv --bin bench-ai
cp "$TARGET/debug/bench-ai" "$STAGE/target/debug/bench-ai-spirv"
cargo build "${FEATURES[@]}" --bin bench-ai
strip "$STAGE/target/debug/deps/it" "$STAGE"/target/debug/bench-*
for m in deepbet deepbet-bbox; do
    mkdir -p "$STAGE/models/$m"
    cp "models/$m/model.safetensors" "$STAGE/models/$m/"
done
# The brain atlas, for issue 9's pipelines in bench-ai.
mkdir -p "$STAGE/models/atlas-dk"
cp models/atlas-dk/atlas.nii.gz models/atlas-dk/labels.csv "$STAGE/models/atlas-dk/"
unzip -p "$WHEEL" data/models/model.pt > "$STAGE/deepbet/model.pt"
for f in nilearn_mni152/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz \
    open_ms_longitudinal/coregistered/patient01/brainmask.nii.gz \
    open_ms_longitudinal/raw/patient01/study{1,2}_{T1W.nii.gz,FLAIR_to_common_space.txt,T1W_intrastudy_to_FLAIR.txt}; do
    mkdir -p "$STAGE/data/$(dirname "$f")"
    cp "$DATA/$f" "$STAGE/data/$f"
done
# Which commit the binaries are built from (check.sh prints it), and whether the tree differed.
{ git rev-parse HEAD; git status --porcelain --untracked-files=no | sed 's/^/changed: /'; } > "$STAGE/commit"
rm -f .device/payload.tar.xz
mkdir -p .device/all .device/speed .device/parity .device/tuned
# One stream each with xz's 64 MiB dictionary: the test binaries share most of their code.
XZ_OPT="-9 -T1" tar -cJf .device/all/payload.tar.xz -C "$STAGE" --exclude=./target/debug/bench-ai-spirv .
XZ_OPT="-9 -T1" tar -cJf .device/speed/payload.tar.xz -C "$STAGE" --exclude=./deepbet --exclude=./target/debug/deps .
XZ_OPT="-9 -T1" tar -cJf .device/parity/payload.tar.xz -C "$STAGE" \
    --exclude=./target/debug/bench-ai --exclude=./target/debug/bench-ai-spirv .
XZ_OPT="-9 -T1" tar -cJf .device/tuned/payload.tar.xz -C "$STAGE" ./commit ./target/debug/bench-ai \
    ./target/debug/bench-ai-spirv ./data/nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
# What each call carries, against the tool's 64 MiB.
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
for p in all speed parity tuned; do
    total=$((tracked + $(du -sb .gl .device/whl ".device/$p" | awk '{ s += $1 } END { print s }')))
    echo "a call carrying .device/$p: $((total / 1000000)) MB of 67 MB (64 MiB)"
    if [ "$total" -gt $((64 * 1024 * 1024)) ]; then
        echo "over the device tool's 64 MiB: .device/$p removed" >&2
        rm -rf ".device/$p"
        [ "$p" = all ] || exit 1
    fi
done
