#!/bin/sh
# Check that patches/series applies cleanly with 'git am' to the base and that
# every patch passes the base tree's scripts/checkpatch.pl. Works in a
# temporary worktree; build/qemu itself is not touched.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
tree=$top/build/qemu
[ -d "$tree/.git" ] || "$top/scripts/make-tree.sh"
wt=$(mktemp -d "$top/build/check-patches.XXXXXX")
cleanup() { git -C "$tree" worktree remove --force "$wt" 2>/dev/null || rm -rf "$wt"; }
trap cleanup EXIT
git -C "$tree" worktree add -q --detach "$wt" base
fail=0
n=0
for p in $(grep -v '^#' "$top/patches/series" | grep . || true); do
    n=$((n + 1))
    if ! git -C "$wt" -c user.name=check -c user.email=check@invalid am -q "$top/patches/$p"; then
        echo "FAIL: $p does not apply to base (after the patches before it)"
        exit 1
    fi
    if out=$(cd "$wt" && ./scripts/checkpatch.pl -q "$top/patches/$p" 2>&1); then
        echo "ok: $p"
    else
        echo "FAIL: checkpatch: $p"
        echo "$out" | sed 's/^/    /'
        fail=1
    fi
    grep -q '^Signed-off-by: ' "$top/patches/$p" ||
        { echo "FAIL: $p has no Signed-off-by"; fail=1; }
done
[ $fail = 0 ] && echo "check-patches: $n patches apply to base and pass checkpatch"
exit $fail
