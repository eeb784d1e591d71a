#!/bin/sh
# Write the commits of build/qemu since tag 'base' to patches/ as git
# format-patch files and regenerate patches/series. The output depends only on
# the commits' contents (zero commit ids, fixed abbreviation, no signature), so
# re-exporting an unchanged tree changes nothing.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
tree=$top/build/qemu
git -C "$tree" rev-parse -q --verify refs/tags/base >/dev/null ||
    { echo "export: $tree has no tag 'base' (run 'make tree')" >&2; exit 1; }
if [ -n "$(git -C "$tree" status --porcelain --untracked-files=no)" ]; then
    echo "export: build/qemu has uncommitted changes; commit them first" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$tree" -c core.abbrev=12 -c diff.noprefix=false -c diff.mnemonicPrefix=false \
    -c diff.algorithm=myers -c diff.renames=true -c format.signature= \
    -c format.coverLetter=false -c format.numbered=auto \
    format-patch -q --zero-commit --no-signature --no-thread -o "$tmp" base..HEAD
rm -f "$top"/patches/*.patch
n=0
: > "$tmp/series"
for f in "$tmp"/*.patch; do
    [ -e "$f" ] || break
    cp "$f" "$top/patches/"
    basename "$f" >> "$tmp/series"
    n=$((n + 1))
done
cp "$tmp/series" "$top/patches/series"
# The tree now matches patches/: record it so make-tree.sh leaves it alone.
git -C "$tree" rev-parse HEAD > "$tree/.git/applied-head"
(cd "$top/patches" && cat series $(cat series)) | sha256sum | cut -d' ' -f1 > "$tree/.git/applied-series"
touch "$top/build/stamp/tree" 2>/dev/null || true
echo "export: $n patches in patches/"
