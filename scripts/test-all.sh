#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (as root), then runs
# the whole suite: type check, lint, unit tests, integration tests against the real registry,
# containerd, skopeo and podman.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker-registry skopeo umoci containerd runc busybox-static podman crun fuse-overlayfs uidmap openssl attr zstd user-mode-linux lvm2 thin-provisioning-tools e2fsprogs kmod xfsprogs systemd nginx)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error

echo "== tests"
npm test
