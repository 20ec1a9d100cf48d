#!/usr/bin/env bash
# Install headless Chromium (Debian package "chromium") for the browser tests of the QC reports.
# Idempotent: does nothing when a chromium binary is already on PATH.
# Needs root (or passwordless sudo) on a Debian/Ubuntu machine; exits non-zero otherwise.
set -euo pipefail

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        echo "chromium already installed: $(command -v "$name")"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: apt-get not found; install Chromium with your package manager" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_chromium.sh: need root (or passwordless sudo) to run apt-get" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium

command -v chromium >/dev/null 2>&1 || { echo "install_chromium.sh: chromium still missing after install" >&2; exit 1; }
echo "chromium installed: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
