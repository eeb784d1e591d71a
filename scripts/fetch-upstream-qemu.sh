#!/bin/sh
# Unpack upstream QEMU 10.0 as packaged in bookworm-backports (Debian's
# qemu-system-x86 1:10.0.2+ds-2+deb13u1~bpo12+1) into a private prefix,
# build/peers/upstream-10.0/, for the benchmarks (bench/). System packages are
# not touched: the .debs are fetched with the private apt configuration
# (scripts/private-apt.sh, state in build/apt) into build/peers/debs/ and
# unpacked with dpkg-deb -x (scripts/unpack-debs.sh).
#
# The binary needs a few bookworm libraries that a build host usually lacks
# (libaio1, libcapstone4, liburing2, ...): they are unpacked into the same
# prefix, and build/peers/upstream-10.0/qemu-system-x86_64 is a wrapper that
# sets LD_LIBRARY_PATH, QEMU_MODULE_DIR and -L (firmware from the prefix's own
# qemu-system-data and backports seabios, which 10.0 requires).
#
# Idempotent: does nothing when the prefix is complete for the pinned version.
# UPSTREAM_QEMU_VERSION overrides the version.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
version=${UPSTREAM_QEMU_VERSION:-1:10.0.2+ds-2+deb13u1~bpo12+1}
peers=$top/build/peers
prefix=$peers/upstream-10.0
debs=$peers/debs
apt="$top/scripts/private-apt.sh"
wrapper=$prefix/qemu-system-x86_64
stamp=$prefix/.version

# QEMU itself, pinned to one version.
qemu_pkgs="qemu-system-x86 qemu-system-common qemu-system-data"
# Firmware 10.0 depends on (seabios >> 1.16.3, i.e. bookworm-backports').
fw_pkgs="seabios/bookworm-backports"
# Shared libraries the binary links against that bookworm hosts often lack,
# with their own dependencies; all from bookworm, unpacked privately.
lib_pkgs="libaio1 libcapstone4 libfuse3-3 libibverbs1 libnl-3-200
 libnl-route-3-200 librdmacm1 libpmem1 libndctl6 libdaxctl1 liburing2
 libvdeplug2 libexecs0"

if [ -x "$wrapper" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ] &&
   "$wrapper" --version >/dev/null 2>&1; then
    echo "fetch-upstream-qemu: $prefix is complete ($version)"
    exit 0
fi

if ! "$apt" apt-cache madison qemu-system-x86 2>/dev/null | grep -qF "| $version |"; then
    echo "fetch-upstream-qemu: updating the private apt lists (build/apt)"
    "$apt" update >/dev/null
fi
if ! "$apt" apt-cache madison qemu-system-x86 | grep -qF "| $version |"; then
    echo "fetch-upstream-qemu: qemu-system-x86 $version is not in the archive; on offer:" >&2
    "$apt" apt-cache madison qemu-system-x86 >&2
    exit 1
fi

"$top/scripts/unpack-debs.sh" fetch-upstream-qemu "$debs" "$prefix.tmp" \
    "$version" "$qemu_pkgs" "$fw_pkgs $lib_pkgs"

cat > "$prefix.tmp/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# Upstream QEMU 10.0 (bookworm-backports) from a private prefix
# (scripts/fetch-upstream-qemu.sh).
here=$(cd "$(dirname "$0")" && pwd)
LD_LIBRARY_PATH=$here/usr/lib/x86_64-linux-gnu:$here/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
QEMU_MODULE_DIR=$here/usr/lib/x86_64-linux-gnu/qemu
export LD_LIBRARY_PATH QEMU_MODULE_DIR
exec "$here/usr/bin/qemu-system-x86_64" -L "$here/usr/share/qemu" -L "$here/usr/share/seabios" "$@"
EOF
chmod +x "$prefix.tmp/qemu-system-x86_64"

# Every library must resolve (a missing one is named here, not at run time).
missing=$(LD_LIBRARY_PATH=$prefix.tmp/usr/lib/x86_64-linux-gnu:$prefix.tmp/lib/x86_64-linux-gnu \
          ldd "$prefix.tmp/usr/bin/qemu-system-x86_64" | awk '/not found/ {print $1}')
if [ -n "$missing" ]; then
    echo "fetch-upstream-qemu: libraries still missing:" $missing >&2
    echo "fetch-upstream-qemu: add their packages to lib_pkgs in $0" >&2
    exit 1
fi
echo "$version" > "$prefix.tmp/.version"
rm -rf "$prefix"
mv "$prefix.tmp" "$prefix"
"$wrapper" --version | head -n1
echo "fetch-upstream-qemu: ready: $wrapper"
