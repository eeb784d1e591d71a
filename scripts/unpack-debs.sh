#!/bin/sh
# Download Debian packages with the private apt configuration
# (scripts/private-apt.sh, state in build/apt) and unpack them into a fresh
# directory with dpkg-deb -x; nothing is installed.  Shared by
# scripts/fetch-upstream-qemu.sh and scripts/fetch-libvirt-backports.sh.
#
#   scripts/unpack-debs.sh TAG DEBS DEST VERSION "PINNED..." ["OTHER..."]
#
# PINNED packages are fetched at exactly VERSION, OTHER ones (NAME or
# NAME/SUITE) at apt's choice, all with `apt-get download` into DEBS.  DEST
# is emptied first, then gets each PINNED package's .deb of VERSION and the
# newest .deb in DEBS of each OTHER one (old ones may linger there).  TAG
# starts every message.
set -eu
[ $# -ge 5 ] || { echo "usage: $0 TAG DEBS DEST VERSION PINNED [OTHER]" >&2; exit 2; }
tag=$1 debs=$2 dest=$3 version=$4 pinned=$5 other=${6:-}
apt="$(cd "$(dirname "$0")" && pwd)/private-apt.sh"

want=
for p in $pinned; do want="$want $p=$version"; done
for p in $other; do want="$want $p"; done
echo "$tag: downloading$want"
mkdir -p "$debs"
# shellcheck disable=SC2086
(cd "$debs" && "$apt" apt-get -q download $want)

rm -rf "$dest"
mkdir -p "$dest"
fver=$(echo "$version" | sed 's/:/%3a/')   # apt-get download's file names
for p in $pinned; do
    f=$(ls "$debs"/"${p}_${fver}"_*.deb 2>/dev/null | head -n1)
    [ -n "$f" ] || { echo "$tag: no .deb for $p $version in $debs" >&2; exit 1; }
    dpkg-deb -x "$f" "$dest"
done
for p in $other; do
    p=${p%%/*}
    f=$(ls -v "$debs"/"${p}"_*.deb 2>/dev/null | tail -n1)
    [ -n "$f" ] || { echo "$tag: no .deb for $p in $debs" >&2; exit 1; }
    dpkg-deb -x "$f" "$dest"
done
