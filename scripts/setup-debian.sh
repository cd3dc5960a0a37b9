#!/usr/bin/env bash
# Installs every system package Lightbox needs on Debian 12, the ui/ npm packages, and a Python
# venv with the reference DICOMweb client (benchmark/interop peer).
# Idempotent: packages already present are skipped, so a warm run takes a second or two.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

packages=(
  # Rust crates that build C, and pkg-config for -sys crates
  build-essential pkg-config curl wget file unzip
  # Tauri 2 on Linux (WebKitGTK 4.1 and friends)
  libwebkit2gtk-4.1-dev libgtk-3-dev libxdo-dev libssl-dev libayatana-appindicator3-dev librsvg2-dev
  # JPEG-LS decoding: dicom-pixeldata's "charls" feature builds CharLS with cmake
  cmake
  # winit/eframe load these at run time
  libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6 libx11-xcb1
  # Software Vulkan (lavapipe) for wgpu without a GPU, and a virtual X server for window tests
  mesa-vulkan-drivers libvulkan1 vulkan-tools xvfb xauth x11-utils xdotool imagemagick
  # Reference PACS and DICOM tools; openssl makes the mutual-TLS test certificates
  orthanc orthanc-dicomweb orthanc-gdcm dcmtk openssl
  # dciodvfy: IOD validation of the SEG/SR we write; pdftotext/pdfinfo read the PDF summaries
  dicom3tools poppler-utils
  # Python for the dicomweb-client interop/benchmark peer (venv below)
  python3 python3-venv
  # Reference DICOM -> NIfTI converter (benchmark peer) and /usr/bin/time for peak RSS
  dcm2niix time
  # Real browser for UI tests
  chromium chromium-driver
  # Node for the web UI (Debian's, only when no node is installed)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages already installed"
fi

# Web UI packages (lockfile-exact); skipped when node_modules matches the lockfile.
if [ -f "$here/ui/package-lock.json" ]; then
  stamp="$here/ui/node_modules/.lightbox-lock-stamp"
  if [ ! -f "$stamp" ] || ! cmp -s "$here/ui/package-lock.json" "$stamp"; then
    echo "setup: installing ui/ npm packages"
    (cd "$here/ui" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$here/ui/package-lock.json" "$stamp"
  else
    echo "setup: ui/ npm packages up to date"
  fi
fi

# Reference Python DICOMweb client (interop/benchmark peer), highdicom (reads back our SEG/SR) and
# schemathesis (fuzzes the REST API from its OpenAPI) in their own venv, version-pinned;
# skipped when the venv already imports those versions. Uses whichever python3 is first on PATH.
py_venv="${LIGHTBOX_PY_VENV:-/var/tmp/lightbox-py}"
dicomweb_client_version="0.61.2"
highdicom_version="0.28.2"
schemathesis_version="4.32.5"
if "$py_venv/bin/python" -c "import dicomweb_client, highdicom, schemathesis, importlib.metadata as m
assert m.version('dicomweb-client') == '$dicomweb_client_version'
assert m.version('highdicom') == '$highdicom_version'
assert m.version('schemathesis') == '$schemathesis_version'" >/dev/null 2>&1; then
  echo "setup: Python venv $py_venv has dicomweb-client, highdicom and schemathesis"
else
  echo "setup: Python venv $py_venv: dicomweb-client==$dicomweb_client_version highdicom==$highdicom_version schemathesis==$schemathesis_version"
  python3 -m venv "$py_venv"
  "$py_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "dicomweb-client==$dicomweb_client_version" "highdicom==$highdicom_version" "schemathesis==$schemathesis_version"
fi
