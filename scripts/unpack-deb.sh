#!/bin/sh
# Unpack the series' own Debian packages (make deb: build/deb) the way
# fetch-stock-qemu.sh unpacks Debian's stock ones, so the packaged binary
# (Debian's compiler flags and configuration, the series applied) can run
# beside the stock one, e.g. in the TCG hot-path benchmark (make
# bench-deb-hotpath):
#
#   build/peers/deb-7.2/usr/bin/qemu-system-x86_64   the binary to run
#   build/peers/deb-7.2/VERSION                      the package version
#
# `scripts/unpack-deb.sh unpatched` does the same with the packages of
# make deb-unpatched (build/deb-unpatched -> build/peers/deb-base-7.2).
#
# qemu-system-x86 and qemu-system-common (the TCG module) are unpacked with
# dpkg-deb -x; nothing is installed.  Their shared libraries are the stock
# packages' (base/test-deps.txt), firmware the system's.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
case ${1:-} in
'') debs=$root/build/deb dest=$root/build/peers/deb-7.2 make=deb ;;
unpatched) debs=$root/build/deb-unpatched dest=$root/build/peers/deb-base-7.2
    make=deb-unpatched ;;
*) echo "usage: $0 [unpatched]" >&2; exit 2 ;;
esac
bin=$dest/usr/bin/qemu-system-x86_64
say() { echo "unpack-deb: $*"; }
die() { echo "unpack-deb: $*" >&2; exit 1; }

x86=$(ls "$debs"/qemu-system-x86_*_amd64.deb 2>/dev/null | head -n1)
common=$(ls "$debs"/qemu-system-common_*_amd64.deb 2>/dev/null | head -n1)
[ -n "$x86" ] && [ -n "$common" ] || die "no packages in $debs: run make $make"
(cd "$debs" && sha256sum --quiet -c SHA256SUMS) ||
    die "$debs does not match its SHA256SUMS: run make $make"
version=$(dpkg-deb -f "$x86" Version)
[ "$(dpkg-deb -f "$common" Version)" = "$version" ] ||
    die "$(basename "$x86") and $(basename "$common") differ in version"
stamp=$(sha256sum <"$debs/SHA256SUMS" | cut -d" " -f1)
if [ ! -x "$bin" ] || [ "$(cat "$dest/.inputs" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$dest.tmp"
    dpkg-deb -x "$x86" "$dest.tmp"
    dpkg-deb -x "$common" "$dest.tmp"
    echo "$version" >"$dest.tmp/VERSION"
    echo "$stamp" >"$dest.tmp/.inputs"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    say "unpacked $(basename "$x86") and $(basename "$common")"
fi
"$root/scripts/link-qemu-data.sh" "$dest"
notfound=$(ldd "$bin" | awk '/not found/ {print $1}' | tr '\n' ' ')
[ -z "$notfound" ] ||
    die "$bin misses shared libraries: $notfound(scripts/fetch-stock-qemu.sh installs the stock binary's)"
if "$bin" -device virtio-mem-pci,help 2>&1 | grep -q dynamic-memslots; then
    [ "$make" = deb ] || die "$bin has a dynamic-memslots property"
else
    [ "$make" != deb ] || die "$bin has no dynamic-memslots property"
fi
say "ready: $bin ($("$bin" --version | head -n 1))"
