#!/usr/bin/env bash
# A local PACS to try Lightbox against: Orthanc with its DICOMweb plugin on 127.0.0.1 only,
# holding the bundled demo study, until Ctrl-C. Prints the settings to export.
#
#   scripts/demo-pacs.sh [HTTP_PORT] [DICOM_PORT]      (defaults 8042, 4242)
set -euo pipefail
cd "$(dirname "$0")/.."
http_port=${1:-8042}
dicom_port=${2:-4242}
command -v Orthanc >/dev/null || { echo "demo-pacs: Orthanc is missing; run scripts/setup-debian.sh" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/lightbox-demo-pacs.XXXXXX")
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
trap 'exit 143' TERM INT
cat > "$dir/orthanc.json" <<JSON
{
  "Name": "LIGHTBOX-DEMO-PACS",
  "StorageDirectory": "$dir/db", "IndexDirectory": "$dir/db",
  "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/share/orthanc/plugins/libOrthancGdcm.so"],
  "HttpPort": $http_port, "RemoteAccessAllowed": false,
  "AuthenticationEnabled": true, "RegisteredUsers": { "lightbox": "lightbox" },
  "DicomAet": "ORTHANC", "DicomPort": $dicom_port, "DicomCheckCalledAet": false,
  "DicomModalities": { "lightbox": ["LIGHTBOX", "127.0.0.1", 11112] },
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/" }
}
JSON
Orthanc "$dir/orthanc.json" >"$dir/orthanc.log" 2>&1 &
pid=$!
url="http://127.0.0.1:$http_port"
for _ in $(seq 1 100); do
  curl -sf -u lightbox:lightbox "$url/system" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "demo-pacs: Orthanc did not start:" >&2; cat "$dir/orthanc.log" >&2; exit 1; }
  sleep 0.1
done
for f in demo/prostate-adc/*.dcm; do
  curl -sf -u lightbox:lightbox -X POST "$url/instances" --data-binary "@$f" -H 'Content-Type: application/dicom' >/dev/null
done
cat <<TEXT
demo-pacs: Orthanc on $url (Explorer: $url/app/explorer.html, user lightbox, password lightbox),
           DICOM AE ORTHANC on port $dicom_port, holding the demo study. Ctrl-C stops it and deletes it.
In another shell:
  export LIGHTBOX_PACS_URL=$url/dicom-web LIGHTBOX_PACS_USER=lightbox LIGHTBOX_PACS_PASSWORD=lightbox
  export LIGHTBOX_STORE=\$(mktemp -d) LIGHTBOX_RULES=\$PWD/demo/rules.toml
  make run
TEXT
wait "$pid"
