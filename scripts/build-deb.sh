#!/bin/sh
# Build Debian binary packages of QEMU with the series (make deb): Debian's own
# packaging (debian/rules through dpkg-buildpackage) on the pinned source
# package, with patches/series appended to debian/patches/series and a local
# version BASE+vmem1. Output: build/deb/*.deb and build/deb/SHA256SUMS.
#
# QEMU_DEB_VERSION  base source package (default: base/version; see fetch-base.sh)
# DEB_LOCAL_SUFFIX  local version suffix (default: +vmem1; +novmem1 unpatched)
# DEB_UNPATCHED=1   the same build without the series (make deb-unpatched):
#                   build/deb-unpatched/, a baseline for benchmarks that
#                   compare the package with Debian's stock one (the build
#                   here differs from Debian's buildd's by itself)
# DEB_QEMU_BUILDS   debian/rules builds to run (default: "qemu"; add "microvm"
#                   for qemu-system-x86_64-microvm)
# DEB_JOBS          parallel jobs (default and maximum: 2)
#
# What is built (to fit a 2-core machine): the arch-dependent packages an x86
# host running qemu-system-x86 needs, from the main build restricted to the
# i386 and x86_64 system targets: qemu-system-x86, qemu-system-common (with the
# modules), qemu-system-gui, qemu-block-extra, qemu-utils, qemu-guest-agent.
# Left out: the other qemu-system-* targets, qemu-user*, qemu-system-xen,
# the microvm binary (unless DEB_QEMU_BUILDS says so) and the arch:all
# qemu-system-data (firmware made with cross compilers; the series does not
# touch it and qemu-system-x86 accepts Debian's: qemu-system-data (>> 7.2+dfsg~)).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
base=${QEMU_DEB_VERSION:-$(cat base/version)}
unpatched=${DEB_UNPATCHED:-0}
if [ "$unpatched" = 1 ]; then
    suffix=${DEB_LOCAL_SUFFIX:-+novmem1}
    series=/dev/null srcdir=build/deb-src-unpatched out=build/deb-unpatched
else
    suffix=${DEB_LOCAL_SUFFIX:-+vmem1}
    series=patches/series srcdir=build/deb-src out=build/deb
fi
builds=${DEB_QEMU_BUILDS:-qemu}
jobs=${DEB_JOBS:-2}
[ "$jobs" -le 2 ] || jobs=2
version=$base$suffix
upstream=${base#1:}            # 7.2+dfsg-7+deb12u18
log=$out/build.log

say() { echo "build-deb: $*"; }

# 1. The local version sorts above the base and below Debian's next update.
n=${base##*+deb12u}
case "$n" in
''|*[!0-9]*) say "cannot find +deb12uN in $base" >&2; exit 1 ;;
esac
next=${base%+deb12u*}+deb12u$((n + 1))
if ! dpkg --compare-versions "$version" gt "$base" ||
   ! dpkg --compare-versions "$version" lt "$next"; then
    say "$version does not sort between $base and $next" >&2
    exit 1
fi
say "version $version (> $base, < $next)"

# 2. Tools and build dependencies (Debian's archive), the verified source package.
scripts/install-deps.sh base/deb-build-deps.txt
scripts/fetch-base.sh

# Nothing to do if build/deb holds the packages of this version and series
# (this script and packaging/ count too; remove $out to force a rebuild).
inputs=$( { echo "$version $builds"; cat "$0" packaging/qemu-vhost.conf "$series"
            for p in $(grep -v '^#' "$series"); do cat "patches/$p"; done; } |
          sha256sum | cut -d' ' -f1)
if [ -f "$out/.inputs" ] && [ "$(cat "$out/.inputs")" = "$inputs" ] &&
   (cd "$out" && sha256sum --quiet -c SHA256SUMS 2>/dev/null); then
    say "build/deb is up to date ($version):"
    sed 's/^/    /' "$out/SHA256SUMS"
    exit 0
fi

# 3. A fresh unpacked source tree (never build/qemu, which is the developer tree).
rm -rf "$srcdir" "$out"
mkdir -p "$srcdir" "$out"
tree=$srcdir/qemu-${upstream%%-*}
say "unpacking qemu_$upstream.dsc into $tree"
# (the files were verified against base/qemu.sha256 by fetch-base.sh)
dpkg-source -x "build/downloads/qemu_$upstream.dsc" "$tree" > "$srcdir/unpack.log" 2>&1 || {
    tail -n 20 "$srcdir/unpack.log" >&2; exit 1; }

# 4. The series, after Debian's patches, in debian/patches/vmem/.
mkdir -p "$tree/debian/patches/vmem"
subjects=
for p in $(grep -v '^#' "$series"); do
    cp "patches/$p" "$tree/debian/patches/vmem/$p"
    echo "vmem/$p" >> "$tree/debian/patches/series"
    # the Subject header, folded over several lines by git format-patch
    s=$(awk '/^Subject: / {sub(/^Subject: (\[PATCH[^]]*\] )?/, ""); s = $0; on = 1; next}
             on && /^[ \t]/ {sub(/^[ \t]+/, " "); s = s $0; next}
             on {print s; exit}' "patches/$p")
    subjects="$subjects    - $s
"
done
count=$(grep -vc '^#' "$series" || true)

# The vhost module option for vhost-net beside dynamic memslots, as a conffile
# of qemu-system-common: /etc/modprobe.d/qemu-vhost.conf.
cp packaging/qemu-vhost.conf "$tree/debian/qemu-vhost.conf"
echo "debian/qemu-vhost.conf etc/modprobe.d/" >> "$tree/debian/qemu-system-common.install"

# 5. The changelog entry naming the series.
maint=${DEBFULLNAME:-virtio-mem dynamic-memslots series}
email=${DEBEMAIL:-vmem@localhost}
{
    echo "qemu ($version) bookworm; urgency=medium"
    echo
    if [ "$unpatched" = 1 ]; then
        echo "  * Local build without the virtio-mem dynamic-memslots series (the"
        echo "    baseline of the series' package: built the same way)."
    else
        echo "  * Local build with the virtio-mem dynamic-memslots series: $count patches"
        echo "    in debian/patches/vmem/, appended to debian/patches/series:"
        printf '%s' "$subjects"
    fi
    echo "  * qemu-system-common: /etc/modprobe.d/qemu-vhost.conf sets the vhost"
    echo "    module's max_mem_regions to 509, so that vhost-net leaves virtio-mem"
    echo "    devices their dynamic memslots."
    echo "  * Arch-only build restricted to the i386 and x86_64 system targets"
    echo "    (debian/rules builds: $builds)."
    echo
    echo " -- $maint <$email>  $(date -R)"
    echo
    cat "$tree/debian/changelog"
} > "$tree/debian/changelog.new"
mv "$tree/debian/changelog.new" "$tree/debian/changelog"

# Apply the series now (dpkg-source applies the unapplied patches of the
# series) so that a patch that does not apply stops here.
say "applying the series ($count patches) with dpkg-source --before-build"
(cd "$tree" && dpkg-source --before-build .) > "$srcdir/patch.log" 2>&1 || {
    tail -n 30 "$srcdir/patch.log" >&2; exit 1; }

# 6. debian/rules with the restriction: only the packages listed above
#    (DH_OPTIONS makes dh_listpackages and every dh_* skip the others), only
#    the x86 system targets (configure --target-list; the rules' own target
#    lists set to match), no linux-user build.
skip="-Nqemu-system -Nqemu-system-arm -Nqemu-system-mips -Nqemu-system-ppc"
skip="$skip -Nqemu-system-sparc -Nqemu-system-misc -Nqemu-system-xen"
skip="$skip -Nqemu-user -Nqemu-user-static -Nqemu-user-binfmt"
cat > "$srcdir/rules" <<EOF
#!/bin/sh
# debian/rules with the build restricted to the x86 system targets (build-deb.sh)
exec make -f debian/rules enable_system=enable enable_linux_user=disable \\
    'system_targets=i386 x86_64' systems=x86 'qemu-builds=$builds' "\$@"
EOF
chmod +x "$srcdir/rules"

say "dpkg-buildpackage -B (nice -n 15, -j$jobs, log: $log); this takes a while"
start=$(date +%s)
(
    cd "$tree"
    export DH_OPTIONS="$skip"
    export QEMU_CONFIGURE_OPTIONS="--target-list=i386-softmmu,x86_64-softmmu"
    export DEB_BUILD_OPTIONS="parallel=$jobs nocheck noddebs terse"
    exec nice -n 15 dpkg-buildpackage -B -uc -us -nc -R"$top/$srcdir/rules"
) > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' INT TERM
while kill -0 $pid 2>/dev/null; do
    sleep 60
    kill -0 $pid 2>/dev/null || break
    step=$(grep -o '^\[[0-9]*/[0-9]*\]' "$log" | tail -n 1 || true)
    last=$(grep -E '^(dh_|dpkg-|\s*dh |make|../../configure)' "$log" | tail -n 1 | cut -c1-70)
    echo "build-deb: $(( ($(date +%s) - start) / 60 )) min: ${step:-} ${last:-}"
done
rc=0; wait $pid || rc=$?
trap - INT TERM
mins=$(( ($(date +%s) - start + 30) / 60 ))
if [ $rc != 0 ]; then
    tail -n 40 "$log" >&2
    say "dpkg-buildpackage failed after $mins min (full log: $log)" >&2
    exit 1
fi

mv "$srcdir"/*.deb "$out"/
cp "$srcdir"/*.buildinfo "$srcdir"/*.changes "$out"/ 2>/dev/null || true
(cd "$out" && sha256sum ./*.deb | sed 's| \./| |' > SHA256SUMS)
echo "$inputs" > "$out/.inputs"
say "built in $mins min:"
(cd "$out" && for d in *.deb; do
    printf '    %-50s %s\n' "$d" "$(du -h "$d" | cut -f1)"; done)
say "checksums in $out/SHA256SUMS"
