#!/bin/sh
# Give a relocatable Debian QEMU unpacked under DEST (dpkg-deb -x) the
# system's firmware and data directories.  Run from DEST/usr/bin, Debian's
# binary looks for them relative to itself (usr/share/qemu, ../share/seabios,
# ../lib/ipxe/qemu; see `-L help`), not in /usr.  A directory the packages
# already created (qemu-system-common ships usr/share/qemu/vhost-user/) gets
# a link to each system entry it lacks.  Shared by fetch-stock-qemu.sh and
# unpack-deb.sh.
#
#   scripts/link-qemu-data.sh DEST
set -eu
[ $# = 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
dest=$1
for d in share/qemu share/seabios lib/ipxe/qemu; do
    [ -d "/usr/$d" ] || { echo "$0: /usr/$d is missing (see base/test-deps.txt)" >&2; exit 1; }
    if [ ! -e "$dest/usr/$d" ]; then
        mkdir -p "$(dirname "$dest/usr/$d")"
        ln -s "/usr/$d" "$dest/usr/$d"
    elif [ ! -L "$dest/usr/$d" ]; then
        for f in "/usr/$d"/*; do
            [ -e "$dest/usr/$d/${f##*/}" ] || ln -s "$f" "$dest/usr/$d/${f##*/}"
        done
    fi
done
