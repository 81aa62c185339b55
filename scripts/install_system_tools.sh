#!/usr/bin/env bash
# Debian packages the tests use as real peers: Orthanc (a PACS, with DICOMweb), dcmtk (dsrdump,
# storescu) and dicom3tools (dciodvfy); with --viewer also chromium and npm (scripts/viewer_check.py:
# OHIF itself comes from npm, @ohif/app). Installed only when missing; needs root (or sudo) and apt.
set -uo pipefail
need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ls /usr/share/orthanc/plugins*/libOrthancDicomWeb* >/dev/null 2>&1 || need+=(orthanc-dicomweb)
command -v dsrdump >/dev/null 2>&1 || need+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
if [ "${1:-}" = "--viewer" ]; then
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi
[ ${#need[@]} -eq 0 ] && { echo "[tools] orthanc, orthanc-dicomweb, dcmtk, dicom3tools${1:+ and the viewer tools} present"; exit 0; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "[tools] installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || { echo "[tools] could not install ${need[*]}: tests that need them will fail" >&2; exit 1; }
# Debian starts Orthanc as a service on install; the tests start their own on loopback.
$sudo service orthanc stop >/dev/null 2>&1 || true
echo "[tools] installed ${need[*]}"
