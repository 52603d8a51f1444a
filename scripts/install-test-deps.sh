#!/usr/bin/env bash
# Installs the real clients and engines the test suite talks to, on a fresh Debian machine.
# Daemons are installed without being started: the tests start their own on loopback.
set -euo pipefail

# python3-keystone rather than keystone (scripts/keystone.sh), whose post-install wants
# dbconfig and Apache.
apt_packages=(skopeo podman docker.io docker-registry wrk apache2-utils iperf3 python3-pip uidmap fuse-overlayfs libfuse2 fio postgresql slapd ldap-utils haproxy swift swift-proxy swift-account swift-container swift-object memcached python3-keystone python3-keystonemiddleware uwsgi-core uwsgi-plugin-python3)
command -v npm >/dev/null || apt_packages+=(nodejs npm)
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

# The local OpenID Connect issuer (tests/oidc, npm's oidc-provider 9) needs node 20.19 or later:
# Debian 13's nodejs, or NodeSource's on Debian 12 (whose own nodejs 18 is too old).
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
  || { echo "install-test-deps.sh: tests/oidc needs node >= 20.19 (have $(node --version))" >&2; exit 1; }
npm ci --prefix "$(dirname "$0")/../tests/oidc" --silent --no-audit --no-fund
# Azurite, the Azure Blob Storage emulator (scripts/azurite.sh).
npm ci --prefix "$(dirname "$0")/../tests/azurite" --silent --no-audit --no-fund

python3 -m pip install --quiet --disable-pip-version-check -r "$(dirname "$0")/../tests/e2e/requirements.txt"
