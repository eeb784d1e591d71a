#!/bin/sh
# Configure build/qemu for a lean x86_64-softmmu build in build/qemu/build.
# Firmware comes from Debian's seabios, ipxe-qemu and qemu-system-data at their
# installed paths, so build/bin/qemu-system-x86_64 runs without -L.
# Replication is built for COLO (tests/cost/test_colo.py: a COLO secondary
# with a virtio-mem device); it needs no library.
# The vhost-user backends users run beside virtio-mem are built too, with the
# series' libvhost-user: qemu-storage-daemon with its vhost-user-blk export,
# and the C virtiofsd (needs libseccomp-dev and libcap-ng-dev).
# QEMU_DOCS=1 builds the docs as well (needs python3-sphinx, python3-sphinx-rtd-theme).
# QEMU_SANITIZE=1 builds with AddressSanitizer and UBSan.
# QEMU_SRC_DIR and QEMU_BUILD_DIR override the source tree and build directory.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
tree=${QEMU_SRC_DIR:-$top/build/qemu}
bdir=${QEMU_BUILD_DIR:-$tree/build}
docs=--disable-docs
[ "${QEMU_DOCS:-0}" = 1 ] && docs=--enable-docs
extra=
[ "${QEMU_SANITIZE:-0}" = 1 ] && extra="--enable-sanitizers --disable-stack-protector"
mkdir -p "$bdir"
cd "$bdir"
# shellcheck disable=SC2086
"$tree/configure" \
    --meson=/usr/bin/meson \
    --target-list=x86_64-softmmu \
    --without-default-features \
    --enable-kvm --enable-tcg \
    --enable-slirp \
    --enable-replication \
    --enable-vhost-user --enable-vhost-kernel --enable-vhost-net \
    --enable-tools \
    --enable-vhost-user-blk-server \
    --enable-virtiofsd --enable-seccomp --enable-cap-ng \
    --disable-werror \
    --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
    $docs $extra
