#!/bin/sh
# Install the Debian packages listed in the given list files (default:
# base/build-deps.txt; one package per line, '#' comments) that are missing.
# Needs root; as a non-root user it names the packages and what to run.
#
#   scripts/install-deps.sh                       build dependencies
#   scripts/install-deps.sh base/bench-deps.txt   what make bench needs
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
[ $# -gt 0 ] || set -- "$top/base/build-deps.txt"
missing=
for list in "$@"; do
    for p in $(grep -v '^#' "$list" | grep .); do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing="$missing $p"
    done
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing" >&2
    echo "install-deps: run 'sudo scripts/install-deps.sh $*' first" >&2
    exit 1
fi
echo "install-deps: installing$missing"
apt-get -q update >/dev/null
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
