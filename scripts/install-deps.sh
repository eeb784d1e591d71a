#!/bin/sh
# Install the Debian packages listed in base/build-deps.txt that are missing.
# Needs root (as a non-root user run: sudo scripts/install-deps.sh).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
pkgs=$(grep -v '^#' "$top/base/build-deps.txt" | grep . | tr '\n' ' ')
missing=
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing" >&2
    echo "install-deps: run 'sudo scripts/install-deps.sh' first" >&2
    exit 1
fi
echo "install-deps: installing$missing"
apt-get -q update
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
