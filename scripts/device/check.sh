#!/usr/bin/env bash
# The GPU machine's checks for issues 5 (renderer), 7 (AI runtime) and 9 (brain pipeline timing),
# in one call of the workplace's device tool, from the repository root:
#
#   scripts/device/pack.sh       # here: builds and packs .device/{all,speed,parity,tuned}/payload.tar.xz
#   device run: bash scripts/device/check.sh
#               # carry .gl, .device/whl and .device/all (everything but the SPIR-V bench-ai)
# or, in two calls (the tool carries 64 MiB a call, the checkout's tracked files included):
#   device run: STEPS=render,aibench ...   # carry .gl, .device/whl and .device/speed
#   device run: STEPS=render,parity ...    # carry .gl, .device/whl and .device/parity
# and PlainConvUNet's convolutions tuned per layer, both builds (issue 7):
#   device run: STEPS=tuned ...            # carry .gl, .device/whl and .device/tuned
#   device run: STEPS=remember ...         # the same carry: tuning kept for a second process
#   device run: STEPS=mma ...              # the same carry: the tensor-core kernel on one
#               # layer in f16 and f32, then in the network (LIGHTBOX_AI_CONV=units, nothing tuned)
#   device run: STEPS=tuned TUNED_BUILDS=bench-ai-spirv TUNED_VARIANTS=f16:tuned:1024 ...
#               # the same carry: the f16 network tuned per layer, the new kernel among the ways
#
# It runs, each step capped in time and logged under $OUT, the issues' open figures first, so a
# call cut short still answers them:
#   1. the renderer's golden and geometry tests on the NVIDIA GPU, each pixel launched both
#      ways (compute pass and fragment stage);
#   2. bench-render (issue 5's figures, GPU time; pixels launched by compute, the renderer's
#      choice on a GPU, and by the fragment stage beside it: a data-centre GPU runs fragments on
#      a few of its multiprocessors only; the volume rendering with and without its quick look
#      through the texture filter);
#   3. PyTorch's PlainConvUNet timings, then bench-ai on the GPU (issue 7's figures in f32 and
#      f16, by burn's convolution kernels and as matrix products (LIGHTBOX_AI_CONV=gemm, in
#      96 MiB and 1 GiB slabs), and issue 9's: the whole brain pipeline for one and two time
#      points; one full-resolution layer by burn's kernels, the GEMM path and its matrix
#      products alone), with burn's autotune choices logged;
#   4. the PlainConvUNet again from a build with burn's SPIR-V compiler (feature gpu-spirv:
#      cooperative matrices, i.e. tensor cores), where the payload holds it;
#   5. PyTorch references (scripts/device/pytorch_reference.py): parity fixtures for deepbet and
#      an nnU-Net v2 folder saved by torch.save;
#   6. the parity tests on burn wgpu against those fixtures;
#   7. brain extraction's Dice test on the GPU.
set -u
OUT=${OUT:-/tmp/lightbox-device-out}
mkdir -p "$OUT"
ROOT=$PWD
X=$ROOT/.device/x
# STEPS (default all): which of render (1, 2), aibench (3, 4), parity (5, 6, 7), ai (3, 4, 5,
# 6, 7), mma (3m: the full-resolution layer in f16 by every way, Lightbox's tensor-core kernel
# among them, then the f16 network with that kernel, SPIR-V build), tuned (3t: convolutions tuned per layer) and remember (3r: the
# tuner's choices kept for a second process; none of the last three in the default) to run. Their time limits add up to about 640 s, past one call's 600 s; they usually end
# well inside them, and what a cut-short call logged under $OUT still comes back.
STEPS=${STEPS:-ai,render}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
step() { echo; echo "=== $* ($(date +%T))"; }

step setup
if command -v nvidia-smi > /dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
mkdir -p "$X"
payloads=$(ls .device/*/payload.tar.xz .device/payload.tar.xz 2>/dev/null)
[ -n "$payloads" ] || { echo "no payload: carry .device/speed or .device/parity (scripts/device/pack.sh)"; exit 1; }
for p in $payloads; do
    echo "payload: $p"
    python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$p" "$X" || exit 1
done
echo "payload built from: $(cat "$X/commit" 2>/dev/null || echo 'an unrecorded commit')"
for m in deepbet deepbet-bbox; do cp "$X/models/$m/model.safetensors" "models/$m/"; done
cp "$X"/models/atlas-dk/* models/atlas-dk/ || echo "no atlas in the payload: bench-ai's brain pipeline needs it"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 RUST_BACKTRACE=1
export CARGO_MANIFEST_DIR=$ROOT/tests LIGHTBOX_TEST_DATA=$X/data
BIN=$X/target/debug
IT=$BIN/deps/it

# The device tool brings back at most 8 files from $OUT, two folders deep: the fixtures travel
# as one tar, the PyTorch timings in their log.
REF=/tmp/lightbox-reference
mkdir -p "$REF"
# Which convolution kernels autotune picked, and what each candidate took: burn's implicit GEMM
# on cooperative matrices (tensor cores) needs the SPIR-V compiler and f16 inputs, and declines
# otherwise; the log tells which ran (issue 7).
# (No cache: a warm machine would log cache hits instead of the candidates' times.)
autotune_log() {
    printf '[autotune]\ndisable_cache = true\n[autotune.logger]\nlevel = "full"\nfile = "%s"\nappend = false\n' "$1" > "$ROOT/cubecl.toml"
}
trap 'rm -f "$ROOT/cubecl.toml"' EXIT

if want render; then
step "1. renderer tests on the GPU"
if [ -x "$IT" ]; then
    # --nocapture: the tests print every byte difference beyond one grey level.
    WGPU_BACKEND=vulkan timeout 45 "$IT" render:: --test-threads 2 --nocapture 2>&1 | tee "$OUT/render-tests.log"
else
    echo "no test binary here: the renderer's tests run in the call that carries .device/parity"
fi

step "2. bench-render"
# The SM clock while it runs: the DVR figure (98 ms against 4 ms) may be a GPU left at its idle
# clock under Vulkan graphics work (issue 5's open question).
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm --format=csv,noheader,nounits -lms 100 > "$REF/gpu-clock.csv" &
CLOCKS=$!
WGPU_BACKEND=vulkan timeout 90 "$BIN/bench-render" 2>&1 | tee "$OUT/bench-render.log"
kill $CLOCKS 2>/dev/null
echo "SM clock during bench-render (MHz, nvidia-smi): lowest $(cut -d, -f1 "$REF/gpu-clock.csv" | sort -n | head -1), highest $(cut -d, -f1 "$REF/gpu-clock.csv" | sort -n | tail -1), the GPU's maximum $(cut -d, -f2 "$REF/gpu-clock.csv" | sort -n | tail -1)" | tee -a "$OUT/bench-render.log"

fi

if want ai || want aibench; then
step "3. PyTorch PlainConvUNet, then bench-ai on the GPU"
timeout 50 python3 scripts/device/pytorch_reference.py "$REF" "$X/deepbet/model.pt" bench 2>&1 | tee -a "$OUT/torch.log"
cat "$REF/torch_bench.json" >> "$OUT/torch.log"
nvidia-smi --query-gpu=memory.used,clocks.sm --format=csv,noheader,nounits -lms 100 > "$REF/gpu-memory.csv" &
SAMPLER=$!
autotune_log "$REF/autotune.log"
# UNET_ONLY=1: the PlainConvUNet figures alone (no brain extraction, no pipelines).
env ${UNET_ONLY:+LIGHTBOX_BENCH_UNET_ONLY=1} LIGHTBOX_TORCH_BENCH=$REF/torch_bench.json timeout 200 "$BIN/bench-ai" gpu 2>&1 | tee "$OUT/bench-ai.log"
rm -f "$ROOT/cubecl.toml"
kill $SAMPLER 2>/dev/null
if [ -x "$BIN/bench-ai-spirv" ]; then
    step "4. bench-ai with burn's SPIR-V compiler (cooperative matrices)"
    autotune_log "$REF/autotune-spirv.log"
    # Into bench-ai.log: the device tool brings back at most 8 files.
    LIGHTBOX_BENCH_UNET_ONLY=1 LIGHTBOX_TORCH_BENCH=$REF/torch_bench.json timeout 120 "$BIN/bench-ai-spirv" gpu 2>&1 | tee -a "$OUT/bench-ai.log"
    rm -f "$ROOT/cubecl.toml"
fi
tar -cf "$OUT/autotune.tar" -C "$REF" $(cd "$REF" && ls autotune*.log 2>/dev/null)
echo "peak GPU memory in use during bench-ai (whole GPU, nvidia-smi): $(cut -d, -f1 "$REF/gpu-memory.csv" | sort -n | tail -1) MiB" | tee -a "$OUT/bench-ai.log"
# burn's wgpu kernels at 0.073x PyTorch (issue 7): a Vulkan compute load at an idle clock would explain much.
echo "SM clock during bench-ai (MHz, nvidia-smi): lowest $(cut -d, -f2 "$REF/gpu-memory.csv" | sort -n | head -1), highest $(cut -d, -f2 "$REF/gpu-memory.csv" | sort -n | tail -1)" | tee -a "$OUT/bench-ai.log"
fi

if want mma; then
# One full-resolution layer (32 → 32 channels, 3³, 128³) in f16, then in f32, by burn's
# kernels, the GEMM path and each of Lightbox's ways, its tensor-core kernel
# (lightbox_ai::kernels::mma; in f32 three products of f16 halves) among them: whether the
# driver takes that kernel (else "left out" and why) and how fast it is, then PlainConvUNet
# with that kernel for every 3³ layer (LIGHTBOX_AI_CONV=units: nothing tuned first) against
# PyTorch in the same call, before the tuned network (issue 7). MMA_LAYERS (f16 f32), MMA_LIMIT
# (s, each), MMA_NET_LIMIT (s); MMA_VARIANTS (bench-ai's variants, f16:units,f32:units).
step "3m. one full-resolution layer by every way, then the network on matrix units (SPIR-V build)"
build=bench-ai-spirv
[ -x "$BIN/$build" ] || build=bench-ai
crashed=
for layer in ${MMA_LAYERS:-f16 f32}; do
LIGHTBOX_BENCH_UNET_ONLY=1 LIGHTBOX_BENCH_VARIANTS= LIGHTBOX_BENCH_LAYER_PRECISION=$layer \
    timeout "${MMA_LIMIT:-150}" "$BIN/$build" gpu 2>&1 | tee -a "$OUT/bench-ai.log"
rc=${PIPESTATUS[0]}
# A signal other than the time limit's (124, or 137 once killed): the driver crashed.
if [ "$rc" -gt 128 ] && [ "$rc" -ne 137 ]; then crashed=$rc; echo "bench-ai ($layer layer) died: exit status $rc"; fi
done
# Where the driver crashed, refused the tensor-core kernel, or the kernel computed something
# else ("left out"): its SPIR-V as cubecl compiled it, to read here. The layer profile times
# that kernel first, so a short run logs it (then burn's candidates, until the time limit).
if [ -n "$crashed" ] || grep -q "on matrix units (tensor cores).*: left out" "$OUT/bench-ai.log"; then
    echo "the tensor-core kernel failed: its SPIR-V into mma-kernels.log.gz"
    LIGHTBOX_BENCH_UNET_ONLY=1 LIGHTBOX_BENCH_VARIANTS= LIGHTBOX_BENCH_LAYER_PRECISION=f16 \
        CUBECL_DEBUG_LOG=$REF/mma-kernels.log CUBECL_DEBUG_OPTION=debug timeout 40 "$BIN/$build" gpu > /dev/null 2>&1
    gzip -c "$REF/mma-kernels.log" > "$OUT/mma-kernels.log.gz" || echo "no kernel log was written"
fi
[ -f "$REF/torch_bench.json" ] || { timeout 50 python3 scripts/device/pytorch_reference.py "$REF" "$X/deepbet/model.pt" bench 2>&1 | tee -a "$OUT/torch.log"; cat "$REF/torch_bench.json" >> "$OUT/torch.log"; }
LIGHTBOX_BENCH_UNET_ONLY=1 LIGHTBOX_BENCH_VARIANTS=${MMA_VARIANTS:-f16:units,f32:units} LIGHTBOX_BENCH_LAYER_PRECISION=none \
    LIGHTBOX_TORCH_BENCH=$REF/torch_bench.json timeout "${MMA_NET_LIMIT:-150}" "$BIN/$build" gpu 2>&1 | tee -a "$OUT/bench-ai.log"
fi

if want tuned; then
# The convolutions tuned per layer (LIGHTBOX_AI_CONV=tuned), WGSL build first (where Lightbox's
# own kernels meet f32 without tensor cores: strict f32, then TF32's accuracy), then the SPIR-V
# one (f16 on tensor cores first, then f32); TUNED_VARIANTS, where set, picks what both builds
# time (bench-ai's LIGHTBOX_BENCH_VARIANTS). Each variant tunes every layer shape afresh, so
# the one the issue's goal needs most comes first in each build.
step "3t. PyTorch PlainConvUNet, then bench-ai's tuned convolutions (WGSL, then SPIR-V)"
# PyTorch's figures once a call (the mma step may have timed them already).
[ -f "$REF/torch_bench.json" ] || { timeout 50 python3 scripts/device/pytorch_reference.py "$REF" "$X/deepbet/model.pt" bench 2>&1 | tee -a "$OUT/torch.log"; cat "$REF/torch_bench.json" >> "$OUT/torch.log"; }
# TUNED_BUILDS (both by default), TUNED_LIMIT (s, each): the SPIR-V build's first tuning of
# every shape took over 165 s for one variant on an H200.
variants_of() {
    case $1 in
        bench-ai) echo f32:tuned:1024,f32:tuned-tf32:1024 ;;
        *) echo f16:tuned:1024,f32:tuned:1024 ;;
    esac
}
for build in ${TUNED_BUILDS:-bench-ai bench-ai-spirv}; do
    [ -x "$BIN/$build" ] || continue
    autotune_log "$REF/autotune-$build.log"
    # Each build's choices in its own tuning file (the name says the build), brought back.
    LIGHTBOX_AI_TUNING_DIR=$REF/tuning LIGHTBOX_BENCH_UNET_ONLY=1 \
        LIGHTBOX_BENCH_VARIANTS=${TUNED_VARIANTS:-$(variants_of "$build")} \
        LIGHTBOX_TORCH_BENCH=$REF/torch_bench.json timeout "${TUNED_LIMIT:-240}" "$BIN/$build" gpu 2>&1 | tee -a "$OUT/bench-ai.log"
    rm -f "$ROOT/cubecl.toml"
done
tar -cf "$OUT/autotune.tar" -C "$REF" $(cd "$REF" && ls autotune*.log 2>/dev/null) $(cd "$REF" && ls tuning/*.json 2>/dev/null)
fi

if want remember; then
# The tuner's choices kept on disk (lightbox_ai::tuning): two processes of the SPIR-V build, as a
# user's first and second run on this GPU. The first times each layer shape (and keeps each as
# it goes: cut short, it still leaves the shapes it finished), the second starts with them.
# burn's own autotune cache stays on, as for a user. REMEMBER_VARIANTS: what both time.
step "3r. PyTorch PlainConvUNet, then the SPIR-V build's tuned convolutions, first and second process"
timeout 50 python3 scripts/device/pytorch_reference.py "$REF" "$X/deepbet/model.pt" bench 2>&1 | tee -a "$OUT/torch.log"
cat "$REF/torch_bench.json" >> "$OUT/torch.log"
build=bench-ai-spirv
[ -x "$BIN/$build" ] || build=bench-ai
for limit in ${REMEMBER_LIMITS:-190 90}; do
    echo "--- $build, a process of at most $limit s, tuning kept in $REF/tuning"
    LIGHTBOX_AI_TUNING_DIR=$REF/tuning LIGHTBOX_BENCH_UNET_ONLY=1 LIGHTBOX_BENCH_VARIANTS=${REMEMBER_VARIANTS:-f16:tuned:1024} \
        LIGHTBOX_TORCH_BENCH=$REF/torch_bench.json timeout "$limit" "$BIN/$build" gpu 2>&1 | tee -a "$OUT/bench-ai.log"
done
cp "$REF"/tuning/*.json "$OUT/" 2>/dev/null || echo "no tuning file was written"
fi

if want ai || want parity; then
[ -f "$X/deepbet/model.pt" ] || echo "no deepbet/model.pt: the parity steps need .device/parity carried"
step "5. PyTorch references"
timeout 100 python3 scripts/device/pytorch_reference.py "$REF" "$X/deepbet/model.pt" deepbet,nnunet 2>&1 | tee "$OUT/torch.log"
tar -cf "$OUT/parity.tar" -C "$REF" parity

step "6. parity on burn wgpu"
# nnU-Net v1's references are made on the CPU by nnU-Net v1 itself (scripts/reference/
# nnunet_v1.sh): the GPU run compares against the same files.
cp -r "$ROOT"/tests/fixtures/parity/nnunet_v1 "$ROOT"/tests/fixtures/parity/nnunet_v1.* "$REF/parity/"
LIGHTBOX_AI_DEVICE=gpu LIGHTBOX_PARITY_FIXTURES=$REF/parity timeout 90 "$IT" parity:: --test-threads 1 --nocapture 2>&1 | tee "$OUT/parity.log"

fi

if want ai || want parity; then

step "7. brain extraction Dice on the GPU"
LIGHTBOX_AI_DEVICE=gpu timeout 60 "$IT" ai::brain_extraction_reaches_dice_095_on_real_brains --nocapture 2>&1 | tee "$OUT/dice.log"

fi

step summary
echo "payload built from: $(head -1 "$X/commit" 2>/dev/null)"
grep -hE "test result|max abs|FAILED|panicked|more than one step|Dice|fps|ms a frame|GB/s|first pixels|brain extraction:|brain pipeline|atrophy pipeline|PlainConvUNet|PyTorch|full-resolution layer|the same layer by|launch|peak|SM clock|first run|by kind|in all, against|instance norm|---" \
    "$OUT"/*.log | cut -c1-400
