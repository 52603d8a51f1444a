#!/usr/bin/env bash
# Installs the real clients and engines the test suite talks to, on a fresh Debian machine.
# Daemons are installed without being started: the tests start their own on loopback.
set -euo pipefail

apt_packages=(skopeo podman docker.io docker-registry wrk apache2-utils iperf3 python3-pip uidmap fuse-overlayfs libfuse2 fio postgresql slapd ldap-utils)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Keep package post-install scripts from starting services on this machine.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m pip install --quiet --disable-pip-version-check -r "$(dirname "$0")/../tests/e2e/requirements.txt"
