#!/bin/sh
# Create or update build/qemu: a git tree whose first commit is Debian's qemu
# source (Debian's patches applied), tagged 'base', with patches/series applied
# on top as commits by 'git am'.
#
# When patches/ changes, the tree is reset to 'base' and the series applied
# again (only files the series touches change, so the build stays incremental).
# A tree with work that is not in patches/ (uncommitted changes, or commits
# made since the last apply) is never overwritten: export it first.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
tree=$top/build/qemu
dl=$top/build/downloads
version=$(cat "$top/base/version")
dsc=$dl/qemu_${version#1:}.dsc
ident="-c user.name=qemu-dynamic-memslots -c user.email=tooling@invalid"

series_hash() {
    (cd "$top/patches" && cat series $(grep -v '^#' series | grep .) 2>/dev/null) |
        sha256sum | cut -d' ' -f1
}

apply_series() {
    n=0
    for p in $(grep -v '^#' "$top/patches/series" | grep . || true); do
        n=$((n + 1))
        # Keep commit ids reproducible: committer date = author date.
        if ! git -C "$tree" $ident am -q --committer-date-is-author-date \
                "$top/patches/$p"; then
            git -C "$tree" am --abort || true
            echo "make-tree: patches/$p does not apply" >&2
            exit 1
        fi
    done
    echo "make-tree: applied $n patches"
    git -C "$tree" rev-parse HEAD > "$tree/.git/applied-head"
    series_hash > "$tree/.git/applied-series"
}

if [ ! -d "$tree/.git" ]; then
    echo "make-tree: unpacking $(basename "$dsc") with Debian's patches"
    rm -rf "$tree" "$tree.tmp"
    dpkg-source --no-check -x "$dsc" "$tree.tmp" >/dev/null
    # The tree is QEMU's source as Debian builds it; Debian's packaging dir
    # and quilt state are not part of it.
    rm -rf "$tree.tmp/debian" "$tree.tmp/.pc"
    mv "$tree.tmp" "$tree"
    git -C "$tree" init -q -b master
    printf '/build/\n/build-*/\n' >> "$tree/.git/info/exclude"
    git -C "$tree" add -A -f
    GIT_AUTHOR_DATE='2000-01-01T00:00:00Z' GIT_COMMITTER_DATE='2000-01-01T00:00:00Z' \
        git -C "$tree" $ident commit -q -m "Debian qemu $version (Debian patches applied)"
    git -C "$tree" tag base
    apply_series
    exit 0
fi

if [ "$(cat "$tree/.git/applied-series" 2>/dev/null)" = "$(series_hash)" ]; then
    exit 0      # patches/ unchanged since the last apply: leave the tree alone
fi
if [ -n "$(git -C "$tree" status --porcelain --untracked-files=no)" ]; then
    echo "make-tree: patches/ changed but build/qemu has uncommitted changes;" \
         "commit and 'make export', or discard them" >&2
    exit 1
fi
if [ "$(git -C "$tree" rev-parse HEAD)" != "$(cat "$tree/.git/applied-head" 2>/dev/null)" ]; then
    echo "make-tree: patches/ changed and build/qemu has commits not exported to patches/;" \
         "run 'make export' (or 'git -C build/qemu reset --hard base' to drop them)" >&2
    exit 1
fi
echo "make-tree: patches/ changed, re-applying the series on base"
# Remember the files the old series touched, with content hash and mtime, so
# that the ones the new series leaves unchanged get their mtime back and the
# rebuild only covers what really changed.
stamps=$(mktemp)
trap 'rm -f "$stamps"' EXIT
git -C "$tree" diff --name-only base HEAD | while read -r f; do
    [ -f "$tree/$f" ] &&
        printf '%s\t%s\t%s\n' "$(git -C "$tree" hash-object "$f")" \
            "$(stat -c %y "$tree/$f")" "$f"
done > "$stamps"
git -C "$tree" reset -q --hard base
apply_series
kept=0
while IFS="$(printf '\t')" read -r hash mtime f; do
    if [ -f "$tree/$f" ] && [ "$(git -C "$tree" hash-object "$f")" = "$hash" ]; then
        touch -d "$mtime" "$tree/$f"
        kept=$((kept + 1))
    fi
done < "$stamps"
echo "make-tree: $kept unchanged files keep their timestamps"
