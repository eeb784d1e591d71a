#!/bin/sh
# Build a tiny Linux guest for the real-guest tests and the demo, from Debian
# packages only (the newest signed linux-image-6.1.0-N-amd64 and busybox-static),
# cached in build/guest/:
#
#   build/guest/vmlinuz         the kernel
#   build/guest/initrd.img      gzip'd newc cpio: busybox + virtio(-mem) modules + /init
#                               + /bin/smc, /bin/memrun, /bin/dio (tests/e2e/guest/NAME.c, gcc -static)
#   build/guest/kernel-version  "<package> <package version> <uname -r>"
#
# Packages are fetched with scripts/private-apt.sh (the system's apt config is
# never touched, nothing is installed into the system).  A second run does
# nothing (unless this script or a guest helper's source changed); remove
# build/guest/ to force a rebuild.
#
# The guest's /init serves a command channel on /dev/ttyS1 (ttyS0 is the
# console).  Protocol: the host writes one shell command line; the guest runs
# it with "sh -c" (stdin /dev/null, stderr merged into stdout) and answers with
# the output, then "\n@@END <rc>@@\n" (the newline before the marker is always
# added, so the output is exactly what comes before "\n@@END").  When /init is
# ready (after each boot, e.g. after system_reset) it prints "@@READY@@" on ttyS1.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
APT="$ROOT/scripts/private-apt.sh"
OUT="$ROOT/build/guest"
MODULES="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mem
         virtio_blk fuse virtiofs"

# Static helpers built from tests/e2e/guest/NAME.c into the guest's /bin/NAME.
HELPERS="smc memrun dio"

# The cache is also invalidated when this script (e.g. the guest's /init) or
# a helper's source changes.
stamp=$(for h in $HELPERS; do cat "$ROOT/tests/e2e/guest/$h.c"; done |
        cat "$0" - | cksum)
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/kernel-version" ] &&
   [ "$(cat "$OUT/.script-cksum" 2>/dev/null)" = "$stamp" ]; then
    echo "build-guest: $OUT is up to date ($(cat "$OUT/kernel-version")), nothing to do"
    exit 0
fi

PATH=$PATH:/usr/sbin:/sbin
for tool in dpkg-deb cpio gzip depmod gcc; do
    command -v $tool >/dev/null || { echo "build-guest: $tool is missing" >&2; exit 1; }
done

mkdir -p "$OUT/debs"
if ! ls "$ROOT"/build/apt/lists/*_Packages* >/dev/null 2>&1; then
    echo "build-guest: no package lists yet, running private-apt.sh update"
    "$APT" update
fi

# The newest signed generic kernel: linux-image-6.1.0-N-amd64 with the highest N
# (the anchored pattern excludes -unsigned, -dbg, -rt-* and -cloud-*).
kpkg=$("$APT" apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' |
       awk '{print $1}' | sort -t- -k4,4n | tail -n 1)
[ -n "$kpkg" ] || { echo "build-guest: no linux-image-6.1.0-*-amd64 on offer" >&2; exit 1; }
echo "build-guest: newest kernel on offer: $kpkg"

echo "build-guest: downloading $kpkg busybox-static into $OUT/debs"
(cd "$OUT/debs" && "$APT" apt-get -q download "$kpkg" busybox-static)

scratch=$(mktemp -d "${TMPDIR:-/tmp}/build-guest.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
for pkg in "$kpkg" busybox-static; do
    # shellcheck disable=SC2012  # package file names are plain
    deb=$(ls "$OUT/debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n 1)
    [ -n "$deb" ] || { echo "build-guest: $pkg was not downloaded" >&2; exit 1; }
    echo "build-guest: unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$scratch/pkg"
    [ "$pkg" != "$kpkg" ] || kver=$(dpkg-deb -f "$deb" Version)
done

uname_r=$(basename "$(find "$scratch/pkg/lib/modules" -mindepth 1 -maxdepth 1 | head -n 1)")
moddir="$scratch/pkg/lib/modules/$uname_r"
# Debian's package ships no modules.dep (its postinst runs depmod): make one
# in the scratch tree.
if [ ! -f "$moddir/modules.dep" ]; then
    depmod -b "$scratch/pkg" "$uname_r"
fi
[ -f "$moddir/modules.dep" ] || { echo "build-guest: no modules.dep for $uname_r" >&2; exit 1; }

# --- initramfs tree ---------------------------------------------------------
ir="$scratch/initramfs"
mkdir -p "$ir/bin" "$ir/sbin" "$ir/usr/bin" "$ir/usr/sbin" "$ir/proc" "$ir/sys" \
         "$ir/dev" "$ir/tmp" "$ir/run" "$ir/lib/modules"
cp "$scratch/pkg/bin/busybox" "$ir/bin/busybox"
for applet in $("$ir/bin/busybox" --list-full); do
    [ -e "$ir/$applet" ] || ln -s /bin/busybox "$ir/$applet"
done
# The helpers: static (libc6-dev's libc.a), stripped.
for h in $HELPERS; do
    gcc -static -O2 -Wall -Wextra -s -o "$ir/bin/$h" "$ROOT/tests/e2e/guest/$h.c"
    echo "build-guest: built /bin/$h ($(wc -c < "$ir/bin/$h") bytes)"
done

# Modules in dependency order (each module's deps before it), as paths
# relative to $moddir.  modules.dep lines: "kernel/a/x.ko: kernel/b/y.ko ...".
dep_of() {  # module name -> "path: deps" line, or nothing (built-in / absent)
    awk -v m="$1" '{ p = $1; sub(/:$/, "", p); n = p; sub(/.*\//, "", n);
                     sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/-/, "_", n);
                     if (n == m) { print; exit } }' "$moddir/modules.dep"
}
order=""
add_path() {  # add a module path after its dependencies
    case " $order " in *" $1 "*) return 0 ;; esac
    line=$(awk -v p="$1:" '$1 == p { print; exit }' "$moddir/modules.dep")
    for dep in $(echo "$line" | cut -d: -f2); do
        add_path "$dep"
    done
    order="$order $1"
}
for m in $MODULES; do
    line=$(dep_of "$m")
    if [ -n "$line" ]; then
        add_path "$(echo "$line" | cut -d: -f1)"
    elif grep -q "/$m\.ko" "$moddir/modules.builtin" 2>/dev/null; then
        echo "build-guest: $m is built into the kernel"
    else
        echo "build-guest: $m not in this kernel, skipped"
    fi
done

: > "$ir/lib/modules/load-order"
for path in $order; do
    name=$(basename "$path")
    case "$name" in
        *.ko.xz)  xz -dc "$moddir/$path" > "$ir/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$path" > "$ir/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *.ko.gz)  gzip -dc "$moddir/$path" > "$ir/lib/modules/${name%.gz}"; name=${name%.gz} ;;
        *)        cp "$moddir/$path" "$ir/lib/modules/$name" ;;
    esac
    echo "$name" >> "$ir/lib/modules/load-order"
done
echo "build-guest: modules (load order): $(tr '\n' ' ' < "$ir/lib/modules/load-order")"

cat > "$ir/init" <<'EOF'
#!/bin/sh
# Tiny test guest init: load the virtio(-mem) modules, then serve the command
# channel on /dev/ttyS1 (see scripts/build-guest.sh for the protocol).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$m" || echo "init: insmod $m failed"
done
echo "init: modules loaded, serving commands on /dev/ttyS1"
chan=/dev/ttyS1
while :; do
    stty -F $chan raw -echo 2>/dev/null || echo "init: stty on $chan failed"
    exec 3<>$chan
    printf '@@READY@@\n' >&3
    while IFS= read -r line <&3; do
        [ -n "$line" ] || continue
        sh -c "$line" </dev/null >&3 2>&3
        printf '\n@@END %d@@\n' $? >&3
    done
    exec 3>&-
    sleep 1
done
EOF
chmod 755 "$ir/init"

# --- output -----------------------------------------------------------------
cp "$scratch/pkg/boot/vmlinuz-$uname_r" "$OUT/vmlinuz.tmp"
(cd "$ir" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 > "$OUT/initrd.img.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
echo "$kpkg $kver $uname_r" > "$OUT/kernel-version"
echo "$stamp" > "$OUT/.script-cksum"
echo "build-guest: wrote $OUT/vmlinuz $OUT/initrd.img ($(wc -c < "$OUT/initrd.img") bytes), kernel $uname_r"
