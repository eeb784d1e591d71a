#!/bin/sh
# Download Debian's qemu source package at the pinned version into build/downloads
# with apt's source tooling (private configuration, see private-apt.sh) and
# verify it against base/qemu.sha256. Files already there and verified are
# not downloaded again.
#
# QEMU_DEB_VERSION  the version to fetch (default: the pinned one, base/version)
# QEMU_DEB_ACCEPT_NEWER=1  allow a newer 1:7.2+dfsg-7+deb12u* whose checksums are
#                   not in base/qemu.sha256; they are then added to it (commit them).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
pinned=$(cat "$top/base/version")
version=${QEMU_DEB_VERSION:-$pinned}
dl=$top/build/downloads
sums=$top/base/qemu.sha256
mkdir -p "$dl"

case "$version" in
1:7.2+dfsg-7+deb12u*) ;;
*)  echo "fetch-base: $version is not a 1:7.2+dfsg-7+deb12u* version;" \
         "the series is made for Debian 12's QEMU 7.2" >&2
    exit 1 ;;
esac

upstream=${version#1:}
dsc=qemu_$upstream.dsc

verify() {
    # Every file of the package must be listed in base/qemu.sha256 and match.
    (cd "$dl" && for f in "$@"; do
        line=$(grep "  $f\$" "$sums" || true)
        [ -n "$line" ] || { echo "fetch-base: $f has no checksum in base/qemu.sha256" >&2; exit 1; }
        echo "$line" | sha256sum --quiet -c - || exit 1
    done)
}

files_of_dsc() {
    awk '/^Checksums-Sha256:/ {on=1; next} /^[^ ]/ {on=0} on {print $3}' "$dl/$dsc"
}

if [ -f "$dl/$dsc" ] && verify "$dsc" 2>/dev/null; then
    # shellcheck disable=SC2046
    if verify $(files_of_dsc) 2>/dev/null; then
        echo "fetch-base: qemu $version already downloaded and verified"
        exit 0
    fi
fi

echo "fetch-base: fetching qemu $version with apt-get source (private apt state in build/apt)"
"$top/scripts/private-apt.sh" update >/dev/null
offered=$("$top/scripts/private-apt.sh" apt-cache showsrc qemu | awk '/^Version:/ {print $2}' | sort -u)
if ! echo "$offered" | grep -qx "$version"; then
    echo "fetch-base: qemu $version is not in the archive any more. Versions on offer:" >&2
    echo "$offered" | sed 's/^/    /' >&2
    echo "Rerun with QEMU_DEB_VERSION=<one of them> QEMU_DEB_ACCEPT_NEWER=1 to move the base" >&2
    echo "to a newer 1:7.2+dfsg-7+deb12u* (then commit base/version and base/qemu.sha256)." >&2
    exit 1
fi
if [ "$version" != "$pinned" ] && [ "${QEMU_DEB_ACCEPT_NEWER:-}" != 1 ]; then
    echo "fetch-base: $version is not the pinned base ($pinned);" \
         "set QEMU_DEB_ACCEPT_NEWER=1 to take it" >&2
    exit 1
fi

(cd "$dl" && "$top/scripts/private-apt.sh" apt-get -q source --download-only "qemu=$version")

if [ "$version" != "$pinned" ] && ! grep -q "  $dsc\$" "$sums"; then
    # The user asked for a newer base: record what apt verified (the .dsc is
    # signed by the archive's Release chain) so the next fetch is checked.
    echo "fetch-base: recording checksums of $version in base/qemu.sha256 and base/version"
    (cd "$dl" && sha256sum "$dsc" $(files_of_dsc)) >> "$sums"
    echo "$version" > "$top/base/version"
fi
# shellcheck disable=SC2046
verify "$dsc" $(files_of_dsc)
echo "fetch-base: qemu $version verified"
