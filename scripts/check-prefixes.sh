#!/bin/sh
# Build every prefix of the series: base + patch 1, base + patches 1-2, ...
# In a worktree of its own (build/prefixes) with its own build directory, so
# build/qemu is not touched; each step is an incremental build. Not part of
# 'make check' (it takes one full build plus one rebuild per patch).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
tree=$top/build/qemu
wt=$top/build/prefixes
[ -d "$tree/.git" ] || "$top/scripts/make-tree.sh"
if [ -d "$wt" ]; then
    git -C "$wt" am --abort >/dev/null 2>&1 || true
    git -C "$wt" checkout -q --detach base
else
    git -C "$tree" worktree add -q --detach "$wt" base
fi
start=$(date +%s)
echo "check-prefixes: configuring and building the base"
[ -f "$wt/build/build.ninja" ] ||
    QEMU_SRC_DIR=$wt "$top/scripts/configure-qemu.sh" >"$top/build/prefixes.log" 2>&1 ||
    { tail -n 20 "$top/build/prefixes.log"; exit 1; }
ninja -C "$wt/build" >>"$top/build/prefixes.log" 2>&1 || { echo "FAIL: base does not build"; exit 1; }
n=0
for p in $(grep -v '^#' "$top/patches/series" | grep .); do
    n=$((n + 1))
    t0=$(date +%s)
    git -C "$wt" -c user.name=check -c user.email=check@invalid am -q "$top/patches/$p"
    if ! ninja -C "$wt/build" >>"$top/build/prefixes.log" 2>&1; then
        echo "FAIL: build breaks after $p (see build/prefixes.log)"
        exit 1
    fi
    echo "ok: base + $n patches ($p) builds ($(( $(date +%s) - t0 )) s)"
done
echo "check-prefixes: all $n prefixes build, $(( $(date +%s) - start )) s in total"
