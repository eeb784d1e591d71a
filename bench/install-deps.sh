#!/bin/sh
# Install the Debian packages of base/bench-deps.txt that are missing (the
# benchmarks' own needs: gnuplot for the charts).  As root it runs apt-get;
# otherwise it names what to install.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
pkgs=$(grep -v '^#' "$top/base/bench-deps.txt" | grep . | tr '\n' ' ')
missing=
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "bench: missing packages:$missing (run 'sudo bench/install-deps.sh')" >&2
    exit 1
fi
echo "bench: installing$missing"
apt-get -q update
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
