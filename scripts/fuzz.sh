#!/usr/bin/env bash
# Runs the ingest fuzz target for SECONDS (default 1800) with the shared test data as seeds.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it use the sanitizer flags. Findings land in fuzz/artifacts/ingest/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
data=${LIGHTBOX_TEST_DATA:-../shared/data}
mkdir -p fuzz/corpus/ingest
seeds=()
for d in "$data"/pydicom_testfiles "$data"/dcm_qa_ts/In "$data"/dcmqi_data/segmentations "$data"/dcm_qa_enh/In/Siemens; do
  [ -d "$d" ] && seeds+=("$(realpath "$d")")
done
export RUSTC_BOOTSTRAP=1
cd fuzz
exec cargo fuzz run ingest corpus/ingest "${seeds[@]}" -- \
  -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=2048 -print_final_stats=1
