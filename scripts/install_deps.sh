#!/usr/bin/env bash
# Installs the Debian packages MIL builds with, only those missing.
set -euo pipefail
packages=(g++ cmake ninja-build ccache pkg-config python3 python3-venv python3-pip
          libfmt-dev libspdlog-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev
          libopenblas-dev libgtest-dev libgmock-dev libbenchmark-dev libboost-dev libssl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
