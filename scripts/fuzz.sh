#!/usr/bin/env bash
# Runs a fuzz target for SECONDS (default 1800) with the shared test data as seeds.
#   scripts/fuzz.sh [seconds] [ingest|nifti|dicomweb|text_formats|model_files]
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it use the sanitizer flags. Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
target=${2:-ingest}
data=${LIGHTBOX_TEST_DATA:-../shared/data}
mkdir -p "fuzz/corpus/$target"
case "$target" in
  ingest) seed_dirs=(pydicom_testfiles dcm_qa_ts/In dcmqi_data/segmentations dcm_qa_enh/In/Siemens); max_len=1048576 ;;
  nifti)  seed_dirs=(dcm_qa_ts/Ref dcm_qa_enh/Ref nilearn_mni152); max_len=8388608 ;;
  dicomweb) seed_dirs=(); max_len=65536 ;;
  text_formats) seed_dirs=(open_ms_longitudinal/raw/patient01); max_len=4096 ;;
  model_files) seed_dirs=(); max_len=1048576 ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
seeds=()
for d in "${seed_dirs[@]}"; do
  [ -d "$data/$d" ] && seeds+=("$(realpath "$data/$d")")
done
[ "$target" = dicomweb ] && seeds+=("$(realpath tests/fixtures/dicomweb)")
if [ "$target" = model_files ]; then
  # Small pickles and archives: NumPy pickles, nnU-Net v1's plans and checkpoint records, and
  # the v1 and v2 checkpoints.
  seeds+=("$(realpath tests/fixtures/pickle)")
  cp tests/fixtures/parity/nnunet_v1/plans.pkl tests/fixtures/parity/nnunet_v1/fold_0/model_best.model.pkl \
    tests/fixtures/parity/nnunet_v1/fold_0/model_best.model tests/fixtures/parity/nnunet/fold_0/checkpoint_final.pth \
    "fuzz/corpus/$target/"
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
exec cargo fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
  -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 -print_final_stats=1
