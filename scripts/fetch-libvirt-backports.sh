#!/bin/sh
# Unpack bookworm-backports' libvirt 11.x (the daemon, the QEMU driver and
# virsh) into a private prefix, build/peers/libvirt-bpo/, for the backports
# leg of tests/libvirt/.  The machine's packages are not touched: the .debs are
# fetched with the private apt configuration (scripts/private-apt.sh, state in
# build/apt) into build/peers/debs/ and unpacked with dpkg-deb -x
# (scripts/unpack-debs.sh).
#
# libvirt 11.3 from bookworm-backports needs no newer system library than
# bookworm's own (the few it needs beyond libvirt 9.0's are in
# base/libvirt-deps.txt).  tests/libvirt/run.py runs it in a private mount
# namespace where the prefix is laid over /usr and /etc with overlayfs; the
# prefix's libvirt/ module and data directories are marked opaque (xattr
# trusted.overlay.opaque) so that bookworm's libvirt 9.0 modules under /usr
# stay hidden from it.
#
# Idempotent: does nothing when the prefix is complete for the pinned version.
# LIBVIRT_BPO_VERSION overrides the version.  Without it, when the pinned
# version has left bookworm-backports (which keeps only its newest upload),
# the version bookworm-backports offers now is taken instead.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
version=${LIBVIRT_BPO_VERSION:-11.3.0-2~bpo12+1}
peers=$top/build/peers
prefix=$peers/libvirt-bpo
debs=$peers/debs
apt="$top/scripts/private-apt.sh"
stamp=$prefix/.version

pkgs="libvirt0 libvirt-common libvirt-daemon libvirt-daemon-common
 libvirt-daemon-log libvirt-daemon-driver-qemu libvirt-clients"

if [ -x "$prefix/usr/sbin/libvirtd" ] && [ -x "$prefix/usr/bin/virsh" ] &&
   [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    echo "fetch-libvirt-backports: $prefix is complete ($version)"
    exit 0
fi

if ! "$apt" apt-cache madison libvirt-daemon 2>/dev/null | grep -qF "| $version |"; then
    echo "fetch-libvirt-backports: updating the private apt lists (build/apt)"
    "$apt" update >/dev/null
fi
if ! "$apt" apt-cache madison libvirt-daemon | grep -qF "| $version |"; then
    # bookworm-backports keeps only its newest upload: unless a version was
    # asked for, move on to that one (the test needs libvirt >= 10.1).
    bpo=$("$apt" apt-cache madison libvirt-daemon |
          awk -F' [|] ' '$3 ~ /bookworm-backports/ {print $2; exit}')
    if [ -z "${LIBVIRT_BPO_VERSION:-}" ] && [ -n "$bpo" ]; then
        echo "fetch-libvirt-backports: $version has left bookworm-backports; using $bpo"
        version=$bpo
    else
        echo "fetch-libvirt-backports: libvirt-daemon $version is not in the archive; on offer:" >&2
        "$apt" apt-cache madison libvirt-daemon >&2
        echo "fetch-libvirt-backports: set LIBVIRT_BPO_VERSION to one of the bookworm-backports versions" >&2
        exit 1
    fi
fi

"$top/scripts/unpack-debs.sh" fetch-libvirt-backports "$debs" "$prefix.tmp" \
    "$version" "$pkgs"
# Hide bookworm's libvirt 9.0 modules and data beneath the prefix in the
# overlay (libvirtd loads every driver module it finds; 9.0's would not link
# against 11.x's libvirt.so.0).
python3 - "$prefix.tmp" <<'EOF'
import os, sys
for d in ('usr/lib/x86_64-linux-gnu/libvirt', 'usr/share/libvirt', 'etc/libvirt'):
    os.setxattr(os.path.join(sys.argv[1], d), 'trusted.overlay.opaque', b'y')
EOF
# Every shared library the daemon, the QEMU driver and virsh need must resolve.
missing=$(for f in "$prefix.tmp"/usr/sbin/libvirtd "$prefix.tmp"/usr/bin/virsh \
        "$prefix.tmp"/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/*.so; do
    LD_LIBRARY_PATH="$prefix.tmp/usr/lib/x86_64-linux-gnu" ldd "$f"
done | awk '/not found/ {print $1}' | sort -u)
if [ -n "$missing" ]; then
    echo "fetch-libvirt-backports: libraries missing on this machine:" $missing >&2
    echo "fetch-libvirt-backports: install the bookworm packages that provide them (base/libvirt-deps.txt)" >&2
    exit 1
fi
echo "$version" > "$prefix.tmp/.version"
rm -rf "$prefix"
mv "$prefix.tmp" "$prefix"
echo "fetch-libvirt-backports: libvirt $version unpacked into $prefix"
