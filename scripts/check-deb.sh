#!/bin/sh
# make check-deb: install the packages of build/deb (make deb) the way a
# bookworm user would, in a throwaway bookworm system (debootstrap, chroot),
# and check them:
#
#   1. Debian's stock qemu-system-x86 installs; apt-get install ./*.deb then
#      upgrades it to the built packages (dpkg -s versions checked);
#   2. the e2e suite's plug/unplug test with dynamic-memslots=on and the
#      memslot layout (tests/e2e, tests 1 and 1b) against the chroot's
#      /usr/bin/qemu-system-x86_64 (the harness runs on the host, QEMU runs
#      in the chroot through a wrapper that chroots);
#   3. bookworm's libvirt 9.0, installed in the chroot, drives that QEMU with
#      the README's XML (tests/libvirt/run.py --leg bookworm, run inside the
#      chroot);
#   1b. /etc/modprobe.d/qemu-vhost.conf (max_mem_regions=509) is a conffile
#      of qemu-system-common; the installed qemu-storage-daemon and virtiofsd
#      answer 509 to VHOST_USER_GET_MAX_MEM_SLOTS
#      (scripts/vhost-user-slots.py);
#   4. apt downgrades back to the stock version; dpkg -V finds nothing
#      changed, the stock binary is back (no dynamic-memslots), the stock
#      backends answer 32, qemu-vhost.conf stays as an obsolete conffile
#      (dpkg keeps conffiles a downgrade drops), and a guest with a
#      virtio-mem device starts; apt-get purge qemu-system-common then
#      removes qemu-vhost.conf.
#
# The host's packages and apt configuration are untouched. The base system
# (debootstrap --variant=minbase of the codename, from the Debian mirror the
# machine's apt uses) is cached as build/deb-check/base.tar; the chroot is
# build/deb-check/root, made afresh on each run. /proc, /sys, /dev, /dev/pts
# and the test directories are mounted into it and always unmounted on exit.
# Needs root. Ends with 'N passed, N failed, N skipped'.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
deb=$top/build/deb
work=$top/build/deb-check
root=$work/root
tmp=$work/tmp
tarball=$work/base.tar
passed=0 failed=0 skipped=0

pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
skip() { echo "SKIP: $*"; skipped=$((skipped + 1)); }
say() { echo "check-deb: $*"; }
summary() { echo "$passed passed, $failed failed, $skipped skipped"; }

if [ "$(id -u)" != 0 ]; then
    skip "make check-deb needs root (debootstrap, chroot, mounts)"
    summary; exit 0
fi
ls "$deb"/qemu-system-x86_*.deb >/dev/null 2>&1 || {
    echo "check-deb: no packages in build/deb: run make deb first" >&2; exit 1; }
if (cd "$deb" && sha256sum --quiet -c SHA256SUMS); then
    pass "build/deb/SHA256SUMS matches the .debs"
else
    fail "build/deb/SHA256SUMS does not match the .debs"
fi
version=$(dpkg-deb -f "$deb"/qemu-system-x86_*.deb Version)
say "packages: $version"
scripts/install-deps.sh base/deb-check-deps.txt
scripts/build-guest.sh

# -- mounts, always undone --------------------------------------------------
mounts=
mnt() {     # mnt ARGS... TARGET: mount, and remember TARGET for cleanup
    for target; do :; done
    mkdir -p "$target"
    mount "$@"
    mounts="$target $mounts"
}
in_chroot_pids() {
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && echo "${p#/proc/}"
    done
    return 0
}
cleanup() {
    # Processes still running in the chroot (started by this run) first.
    pids=$(in_chroot_pids)
    if [ -n "$pids" ]; then
        say "killing leftover processes in the chroot: $pids"
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        sleep 1
    fi
    for m in $mounts; do
        umount "$m" 2>/dev/null || umount -l "$m" || say "cannot unmount $m"
    done
    mounts=
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mounted_under() { grep -q " $1[/ ]" /proc/mounts; }

# -- the base system ---------------------------------------------------------
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
scripts/private-apt.sh update >/dev/null      # writes build/apt/etc/suites
mirror=$(awk -v c="$codename" '$2 == c {print $1; exit}' build/apt/etc/suites)
[ -n "$mirror" ] || { echo "check-deb: no $codename suite in the system's apt sources" >&2; exit 1; }
mkdir -p "$work"
if mounted_under "$root"; then
    echo "check-deb: something is still mounted under $root; unmount it first" >&2
    exit 1
fi
rm -rf "$root" "$tmp" "$work/new"
if [ ! -s "$tarball" ]; then
    say "debootstrap --variant=minbase $codename from $mirror (cached in $tarball)"
    t0=$(date +%s)
    if ! debootstrap --variant=minbase --include=python3 "$codename" "$work/new" "$mirror" \
            > "$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log" >&2
        echo "check-deb: debootstrap failed (log: $work/debootstrap.log)" >&2
        exit 1
    fi
    tar -C "$work/new" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$work/new"
    say "base system made in $(( $(date +%s) - t0 )) s"
fi
mkdir -p "$root" "$tmp"
tar -C "$root" -xf "$tarball"
# apt sources: the system's Debian suites (as private-apt.sh found them)
awk '{print "deb", $1, $2, $3}' build/apt/etc/suites > "$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
printf '#!/bin/sh\n# no daemons start in this throwaway system\nexit 101\n' \
    > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

# The chroot's / is a mount point of its own (unshare --propagation and
# pivot_root need that), then the kernel file systems.
mnt --bind "$root" "$root"
mnt -t proc proc "$root/proc"
mnt --bind /sys "$root/sys"
mnt --bind /dev "$root/dev"
mnt --bind /dev/pts "$root/dev/pts"
# The test guest and the harness' socket directory at the same paths inside
mnt --bind "$top/build/guest" "$root$top/build/guest"
mount -o remount,bind,ro "$root$top/build/guest"
mnt --bind "$tmp" "$root$tmp"

in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
                PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
pkg_version() { in_root dpkg-query -W -f '${Version}' "$1" 2>/dev/null || true; }

# -- 1. stock, then the built packages ---------------------------------------
say "apt-get update and install of the stock qemu-system-x86 in the chroot"
t0=$(date +%s)
in_root apt-get -q update > "$work/apt.log" 2>&1
if in_root apt-get -q -y install qemu-system-x86 >> "$work/apt.log" 2>&1; then
    stock=$(pkg_version qemu-system-x86)
    pass "stock qemu-system-x86 $stock installed ($(( $(date +%s) - t0 )) s)"
else
    tail -n 20 "$work/apt.log"
    fail "apt-get install qemu-system-x86 (log: $work/apt.log)"
    summary; exit 1
fi
if dpkg --compare-versions "$version" gt "$stock"; then
    pass "$version sorts above the stock $stock (an upgrade)"
else
    fail "$version does not sort above the archive's $stock: carry the series to the new base (README)"
fi

say "apt-get install ./*.deb (upgrade to the built packages)"
mkdir -p "$root/tmp/vmem-debs"
cp "$deb"/*.deb "$root/tmp/vmem-debs/"
t0=$(date +%s)
if in_root sh -c 'cd /tmp/vmem-debs && apt-get -q -y install ./*.deb' >> "$work/apt.log" 2>&1; then
    pass "apt-get install ./*.deb ($(( $(date +%s) - t0 )) s)"
else
    tail -n 20 "$work/apt.log"
    fail "apt-get install ./*.deb (log: $work/apt.log)"
fi
pkgs=
for f in "$deb"/*.deb; do
    p=$(dpkg-deb -f "$f" Package)
    pkgs="$pkgs $p"
    st=$(in_root dpkg -s "$p" 2>/dev/null | awk '/^Status:/ {s=$2" "$3" "$4} /^Version:/ {v=$2} END {print v" "s}')
    if [ "$st" = "$version install ok installed" ]; then
        pass "dpkg -s $p: $st"
    else
        fail "dpkg -s $p: '$st', want '$version install ok installed'"
    fi
done
v=$(in_root /usr/bin/qemu-system-x86_64 --version | head -n 1)
case "$v" in
*"(Debian $version)"*) pass "/usr/bin/qemu-system-x86_64 --version: $v" ;;
*) fail "/usr/bin/qemu-system-x86_64 --version: $v" ;;
esac

# -- 1b. vhost: the modprobe option, the backends' memslots -------------------
conf=/etc/modprobe.d/qemu-vhost.conf
check_conffile() {  # check_conffile WHEN WANT(current|obsolete)
    line=$(in_root dpkg-query -W -f '${Conffiles}\n' qemu-system-common |
           grep " $conf " || true)
    case "$2:$line" in
    current:*obsolete*|current:) fail "$1: $conf is not a conffile of qemu-system-common: '$line'" ;;
    current:*) pass "$1: $conf is a conffile of qemu-system-common" ;;
    obsolete:*obsolete*) pass "$1: $conf stays, as an obsolete conffile of qemu-system-common ($line)" ;;
    *) fail "$1: $conf: conffile entry '$line', want an obsolete one" ;;
    esac
}
if in_root grep -qx 'options vhost max_mem_regions=509' "$conf"; then
    pass "$conf sets max_mem_regions=509"
else
    fail "$conf: $(in_root cat "$conf" 2>&1 | tail -n 1)"
fi
owner=$(in_root dpkg -S "$conf" 2>/dev/null | cut -d: -f1)
[ "$owner" = qemu-system-common ] && pass "dpkg -S $conf: $owner" ||
    fail "dpkg -S $conf: '$owner'"
check_conffile "installed" current
probe_backend() {   # probe_backend NAME WANT COMMAND...: the backend's memslots
    name=$1 want=$2; shift 2
    rm -f "$tmp/probe.sock"
    in_root "$@" > "$tmp/probe.log" 2>&1 &
    bpid=$!
    i=0
    while [ ! -S "$tmp/probe.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    got=$(python3 scripts/vhost-user-slots.py "$tmp/probe.sock" 2>&1 || true)
    kill $bpid 2>/dev/null || true
    wait $bpid 2>/dev/null || true
    # chroot's child may outlive the chroot process
    pkill -f "$tmp/probe.sock" 2>/dev/null || true
    if [ "$got" = "$want" ]; then
        pass "$name accepts $got memory regions"
    else
        fail "$name: VHOST_USER_GET_MAX_MEM_SLOTS -> '$got', want $want ($(tail -n 2 "$tmp/probe.log"))"
    fi
}
probe_backends() {  # probe_backends WHEN WANT
    truncate -s 16M "$tmp/probe.img"
    mkdir -p "$tmp/probe-dir"
    probe_backend "$1 /usr/bin/qemu-storage-daemon" "$2" /usr/bin/qemu-storage-daemon \
        --blockdev "driver=file,node-name=f0,filename=$tmp/probe.img" \
        --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$tmp/probe.sock"
    probe_backend "$1 /usr/lib/qemu/virtiofsd" "$2" /usr/lib/qemu/virtiofsd \
        "--socket-path=$tmp/probe.sock" -o "source=$tmp/probe-dir" -o sandbox=chroot
}
probe_backends "built" 509

# -- 2. the real-guest smoke test, QEMU from the chroot -------------------------
wrapper=$work/bin/qemu-system-x86_64
mkdir -p "$work/bin"
printf '#!/bin/sh\n# the installed QEMU of the check-deb chroot\nexec chroot %s /usr/bin/qemu-system-x86_64 "$@"\n' \
    "$root" > "$wrapper"
chmod +x "$wrapper"
# QEMU's python/qemu (the harness' QEMUMachine) from the unpacked source package
pydir=$(ls -d "$top"/build/deb-src/qemu-*/python 2>/dev/null | head -n 1)
[ -n "$pydir" ] || { echo "check-deb: build/deb-src is missing: rm -r build/deb; make deb" >&2; exit 1; }

run_suite() {   # run_suite NAME LOG COMMAND...: add the suite's counts to ours
    name=$1 log=$2; shift 2
    "$@" > "$log" 2>&1 || true
    grep -E '^(PASS|FAIL|SKIP)' "$log" | sed "s/^/    $name /" || true
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$log" | tail -n 1)
    if [ -z "$line" ]; then
        tail -n 30 "$log"
        fail "$name: no summary line (log: $log)"
        return
    fi
    # shellcheck disable=SC2086
    set -- $line
    echo "    $name: $line"
    passed=$((passed + $1)); failed=$((failed + $3)); skipped=$((skipped + $5))
    [ "$3" = 0 ] || tail -n 60 "$log"
}

say "e2e tests 1 and 1b against the chroot's /usr/bin/qemu-system-x86_64"
run_suite e2e "$work/e2e.log" env TMPDIR="$tmp" QEMU_BINARY="$wrapper" \
    PYTHONPATH="$pydir" nice -n 10 python3 tests/e2e/run.py 1-plug 1b-on

# -- 3. bookworm's libvirt 9.0 in the chroot ---------------------------------
# The libvirt test runs inside the chroot from a copy at /opt/vmem; its
# build/bin/qemu-system-x86_64 is a symlink to the installed binary, which is
# the <emulator> libvirt probes and starts. It runs in a private mount
# namespace whose root is the chroot (pivot_root), so that its own
# namespaces (unshare, nsenter) see the chroot as /.
cat > "$work/pivot.sh" <<'EOF'
#!/bin/sh
# pivot.sh ROOT COMMAND...: in a private mount namespace (unshare --mount),
# make ROOT the namespace's root and run COMMAND there.
set -e
cd "$1"; shift
pivot_root . mnt
exec chroot . /bin/sh -c 'umount -l /mnt && exec "$@"' sh "$@"
EOF
say "tests/libvirt/run.py --leg bookworm inside the chroot (libvirt 9.0 from its apt)"
v=$root/opt/vmem
mkdir -p "$v/tests" "$v/scripts" "$v/base" "$v/build/bin" "$v/build/qemu"
cp -r tests/lib tests/libvirt "$v/tests/"
cp -r "$pydir" "$v/build/qemu/python"
cp scripts/install-deps.sh "$v/scripts/"
cp base/libvirt-deps.txt "$v/base/"
ln -s /usr/bin/qemu-system-x86_64 "$v/build/bin/qemu-system-x86_64"
mnt --bind "$top/build/guest" "$v/build/guest"
run_suite libvirt "$work/libvirt.log" unshare --mount --propagation private \
    sh "$work/pivot.sh" "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin nice -n 10 python3 \
    /opt/vmem/tests/libvirt/run.py --leg bookworm

# -- 4. back to the stock version ----------------------------------------------
say "downgrade to the stock $stock with apt"
downgrade=
for p in $pkgs; do
    [ "$(pkg_version "$p")" = "$version" ] || continue
    # the archive's version of the package (madison: newest first)
    old=$(in_root apt-cache madison "$p" | awk -F'|' '{gsub(/ /, "", $2); print $2}' |
          grep -vxF "$version" | head -n 1)
    downgrade="$downgrade $p=${old:-$stock}"
done
t0=$(date +%s)
# shellcheck disable=SC2086
if in_root apt-get -q -y install --allow-downgrades $downgrade >> "$work/apt.log" 2>&1; then
    pass "apt-get install --allow-downgrades$downgrade ($(( $(date +%s) - t0 )) s)"
else
    tail -n 20 "$work/apt.log"
    fail "downgrade (log: $work/apt.log)"
fi
left=
for p in $pkgs; do
    pv=$(pkg_version "$p")
    [ "$pv" = "$version" ] && left="$left $p"
done
if [ -z "$left" ]; then
    pass "no package left at $version"
else
    fail "still at $version:$left"
fi
# shellcheck disable=SC2086
out=$(in_root dpkg -V $pkgs 2>&1; in_root dpkg --audit 2>&1)
if [ -z "$out" ]; then
    pass "dpkg -V and dpkg --audit: nothing changed or half-installed"
else
    fail "dpkg -V / --audit: $out"
fi
v=$(in_root /usr/bin/qemu-system-x86_64 --version | head -n 1)
case "$v" in
*"(Debian $stock)"*) pass "/usr/bin/qemu-system-x86_64 --version: $v" ;;
*) fail "/usr/bin/qemu-system-x86_64 --version after the downgrade: $v" ;;
esac
check_conffile "after the downgrade" obsolete
if in_root grep -qx 'options vhost max_mem_regions=509' "$conf"; then
    pass "after the downgrade $conf still sets max_mem_regions=509 (harmless for the stock QEMU)"
else
    fail "after the downgrade: $conf is gone or changed"
fi
probe_backends "stock" 32
out=$(in_root /usr/bin/qemu-system-x86_64 -device virtio-mem-pci,help 2>&1 || true)
if echo "$out" | grep -q 'unplugged-inaccessible' &&
   ! echo "$out" | grep -q 'dynamic-memslots'; then
    pass "stock virtio-mem-pci has no dynamic-memslots property"
else
    fail "virtio-mem-pci properties after the downgrade: $(echo "$out" | grep -c .) lines, dynamic-memslots: $(echo "$out" | grep -c dynamic-memslots)"
fi

say "a guest with a virtio-mem device on the stock binary"
cat > "$work/stock-guest.py" <<'EOF'
"""Boot the test guest on the chroot's (stock) QEMU with a virtio-mem device."""
import os
import sys
sys.path.insert(0, os.path.join(sys.argv[1], 'tests', 'lib'))
from vmguest import GuestVM  # noqa: E402

GiB = 1 << 30
with GuestVM(binary=sys.argv[2], machine='pc-q35-7.2', memory='1G',
             maxmem='5G', name='stock',
             extra_args=['-object', 'memory-backend-ram,id=mem0,size=4G,reserve=off',
                         '-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,'
                         'requested-size=1G,unplugged-inaccessible=on']) as vm:
    _, uname = vm.run('uname -r', check=True)
    print(f'booted in {vm.boot_seconds:.1f}s ({uname.strip()}), '
          f'MemTotal {vm.meminfo() >> 20} MiB')
    devs = [d['data'] for d in vm.qmp('query-memory-devices')
            if d['type'] == 'virtio-mem']
    assert len(devs) == 1 and devs[0]['max-size'] == 4 * GiB, devs
    print(f'virtio-mem: max-size {devs[0]["max-size"] >> 30} GiB, '
          f'size {devs[0]["size"] >> 30} GiB requested 1 GiB')
EOF
if out=$(TMPDIR=$tmp PYTHONPATH=$pydir nice -n 10 python3 "$work/stock-guest.py" "$top" "$wrapper" 2>&1); then
    pass "stock $stock starts a guest: $(echo "$out" | tr '\n' ';')"
else
    echo "$out" | tail -n 30
    fail "a guest on the stock $stock after the downgrade"
fi

say "apt-get purge qemu-system-common (and what depends on it)"
if in_root apt-get -q -y purge qemu-system-common >> "$work/apt.log" 2>&1; then
    pass "apt-get purge qemu-system-common"
else
    tail -n 20 "$work/apt.log"
    fail "apt-get purge qemu-system-common (log: $work/apt.log)"
fi
if in_root test -e "$conf"; then
    fail "$conf is still there after the purge"
else
    pass "the purge removed $conf"
fi

cleanup
summary
[ "$failed" = 0 ]
