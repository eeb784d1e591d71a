#!/bin/sh
# Install the Debian packages listed in base/libvirt-deps.txt that are missing
# (make check-libvirt runs this; needs root: a non-root user runs
# 'sudo tests/libvirt/install-deps.sh' first).  Exit 0 when everything is
# installed, 1 (with the reason on stderr) when it cannot be.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
pkgs=$(grep -v '^#' "$top/base/libvirt-deps.txt" | grep . | tr '\n' ' ')
missing=
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "libvirt install-deps: missing packages:$missing (run 'sudo tests/libvirt/install-deps.sh')" >&2
    exit 1
fi
echo "libvirt install-deps: installing$missing"
apt-get -q update >/dev/null
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
