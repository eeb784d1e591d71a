#!/bin/sh
# Fetch Debian 12's stock qemu-system-x86 (the bookworm build the series is
# based on) and make it runnable from the build tree, as the migration peer of
# the real-guest tests (tests/e2e/):
#
#   build/peers/qemu-system-{x86,common}_<version>_amd64.deb  (private apt)
#   build/peers/stock-7.2/                            dpkg-deb -x of both
#   build/peers/stock-7.2/usr/bin/qemu-system-x86_64  the binary to run
#   build/peers/stock-7.2/VERSION                     the package version
#
# Why qemu-system-common too: Debian builds TCG as a loadable module
# (accel-tcg-x86_64.so, shipped in qemu-system-common); without it the stock
# binary dies with "could not load module for type 'tcg-accel-ops'".
# Debian's binary is relocatable: run from build/peers/stock-7.2/usr/bin it
# looks for modules and firmware relative to itself (usr/bin/../lib/...,
# usr/bin/../share/qemu, ../share/seabios, ../lib/ipxe/qemu; see `-L help`),
# not in /usr: the script links those data directories to the system's.
#
# Nothing from the .deb is installed into the system.  The binary needs shared
# libraries: the missing ones are installed with apt-get (as root), and only
# packages listed in base/test-deps.txt are ever installed.  Its firmware and
# data come from /usr/share/qemu, /usr/share/seabios and /usr/lib/ipxe/qemu
# (qemu-system-data, seabios, ipxe-qemu, also in base/test-deps.txt).
# A second run does nothing but check the binary still runs.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
APT="$ROOT/scripts/private-apt.sh"
PKG=qemu-system-x86
VERSION=${STOCK_QEMU_VERSION:-1:7.2+dfsg-7+deb12u18+b3}
PEERS="$ROOT/build/peers"
DEST="$PEERS/stock-7.2"
BIN="$DEST/usr/bin/qemu-system-x86_64"
DEPS="$ROOT/base/test-deps.txt"
PATH=$PATH:/usr/sbin:/sbin

say() { echo "fetch-stock-qemu: $*"; }
die() { echo "fetch-stock-qemu: $*" >&2; exit 1; }

# --- 1. the packages, unpacked ---------------------------------------------
if [ -x "$BIN" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
    :
else
    mkdir -p "$PEERS"
    file_version=$(echo "$VERSION" | sed 's/:/%3a/')
    rm -rf "$DEST.tmp"
    for pkg in $PKG qemu-system-common; do
        deb="$PEERS/${pkg}_${file_version}_amd64.deb"
        if [ ! -s "$deb" ]; then
            if ! ls "$ROOT"/build/apt/lists/*_Packages* >/dev/null 2>&1; then
                say "no private package lists yet, running private-apt.sh update"
                "$APT" update
            fi
            if ! "$APT" apt-cache madison "$pkg" | awk -v v="$VERSION" '$3 == v {f=1} END {exit !f}'; then
                say "$pkg $VERSION is not on offer in the private lists; refreshing them"
                "$APT" update
            fi
            say "downloading $pkg=$VERSION into $PEERS"
            (cd "$PEERS" && "$APT" apt-get -q download "$pkg=$VERSION")
        fi
        [ -s "$deb" ] || die "$deb was not downloaded"
        got=$(dpkg-deb -f "$deb" Version)
        [ "$got" = "$VERSION" ] || die "$deb has version $got, want $VERSION"
        dpkg-deb -x "$deb" "$DEST.tmp"
        say "unpacked $(basename "$deb")"
    done
    echo "$VERSION" > "$DEST.tmp/VERSION"
    rm -rf "$DEST"
    mv "$DEST.tmp" "$DEST"
fi
[ -x "$BIN" ] || die "$BIN is missing after unpacking"
[ -f "$DEST/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so" ] ||
    die "$DEST has no accel-tcg-x86_64.so (from qemu-system-common)"
# Firmware/data directories, relative to the relocatable binary.
"$ROOT/scripts/link-qemu-data.sh" "$DEST"

# --- 2. its shared libraries and firmware (only from base/test-deps.txt) ----
listed=$(grep -v '^[[:space:]]*#' "$DEPS" | awk 'NF {print $1}')
missing=
for p in $listed; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        die "missing packages:$missing (run this script as root to install them)"
    fi
    say "installing (from base/test-deps.txt):$missing"
    apt-get -q update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
notfound=$(ldd "$BIN" | awk '/not found/ {print $1}' | tr '\n' ' ')
if [ -n "$notfound" ]; then
    die "$BIN still misses shared libraries: $notfound(add their packages to base/test-deps.txt)"
fi

# --- 3. it runs and finds its firmware --------------------------------------
"$BIN" --version | head -n 1 | grep -q 'Debian 1:7.2' ||
    die "$BIN --version does not say Debian 1:7.2: $("$BIN" --version | head -n 1)"
# Realize the q35 7.2 machine with a -kernel (loads bios.bin, kvmvapic.bin,
# linuxboot_dma.bin) and quit; QEMU only warns about missing option ROMs.
kernel=$(mktemp "${TMPDIR:-/tmp}/fetch-stock-qemu.XXXXXX")
trap 'rm -f "$kernel"' EXIT
head -c 4096 /dev/zero > "$kernel"
out=$(echo quit | timeout 60 "$BIN" -machine pc-q35-7.2 -accel tcg -nodefaults \
      -display none -S -monitor stdio -kernel "$kernel" 2>&1) ||
    die "$BIN cannot start a pc-q35-7.2 machine: $out"
if echo "$out" | grep -q 'Could not open'; then
    die "$BIN does not find its firmware: $out"
fi
say "ready: $BIN ($("$BIN" --version | head -n 1))"
