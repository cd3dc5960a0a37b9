#!/usr/bin/env bash
# Fails when a crate breaks the dependency rules of ARCHITECTURE.md (DESIGN.md invariants 1-3).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
packages=$(cargo metadata --no-deps --format-version 1 --locked 2>/dev/null \
  | python3 -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))')

# Crates below the UI and GPU layers: nothing in their whole tree may be a window or GPU stack.
for pkg in $packages; do
  case "$pkg" in
    src-tauri|lightbox-viewer|lightbox-render|lightbox-ai|lightbox-cli|lightbox-tests) continue ;;
  esac
  bad=$(cargo tree -p "$pkg" -e normal --prefix none --locked | awk '{print $1}' | sort -u \
    | grep -E '^(tauri|tauri-runtime|wry|egui|eframe|winit|wgpu|webkit2gtk)$' | tr '\n' ' ' || true)
  if [ -n "$bad" ]; then echo "layering: $pkg depends on $bad"; fail=1; fi
done

# Direct dependencies that only one crate may have.
direct() { cargo tree -p "$1" -e normal --depth 1 --prefix none --locked | tail -n +2 | awk '{print $1}' | sort -u; }
for pkg in $packages; do
  deps=$(direct "$pkg")
  check() { # $1 = regex of crates, $2 = allowed packages
    local hit
    hit=$(printf '%s\n' "$deps" | grep -E "$1" | tr '\n' ' ' || true)
    if [ -n "$hit" ] && ! [[ " $2 " == *" $pkg "* ]]; then
      echo "layering: $pkg uses $hit directly (only $2 may)"; fail=1
    fi
  }
  # lightbox-pacs speaks DIMSE (dicom-ul and the command sets it carries), per the crate map.
  check '^dicom-' "lightbox-dicom lightbox-pacs"
  check '^tauri$' "src-tauri"
  check '^(egui|eframe|egui-wgpu|winit)$' "lightbox-viewer"
  check '^wgpu$' "lightbox-render lightbox-viewer"
  check '^burn' "lightbox-ai"
done

if [ "$fail" -ne 0 ]; then exit 1; fi
echo "layering: ok ($(echo $packages | wc -w) packages)"
