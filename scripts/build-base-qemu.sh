#!/bin/sh
# Build the unpatched base (Debian's 7.2 source with Debian's patches, tag
# 'base' of build/qemu) with the configuration of the patched build
# (scripts/configure-qemu.sh) into build/peers/base-7.2/, for the benchmarks:
# "unpatched 7.2, this build" differs from the patched binary only by the
# series, where Debian's stock binary also differs by compiler flags and
# features. Its own worktree (build/base-tree); build/qemu is not touched.
# Idempotent: does nothing when the binary is there for the current base.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
tree=$top/build/qemu
wt=$top/build/base-tree
out=$top/build/peers/base-7.2
[ -d "$tree/.git" ] || "$top/scripts/make-tree.sh"
rev=$(git -C "$tree" rev-parse base)
if [ -x "$out/qemu-system-x86_64" ] && [ "$(cat "$out/.rev" 2>/dev/null)" = "$rev" ]; then
    exit 0
fi
if [ -d "$wt" ]; then
    git -C "$wt" checkout -q --detach "$rev"
else
    git -C "$tree" worktree add -q --detach "$wt" "$rev"
fi
log=$top/build/base-build.log
echo "build-base-qemu: configuring and building unpatched 7.2 (log: build/base-build.log; ~5 min)"
{ [ -f "$wt/build/build.ninja" ] ||
      QEMU_SRC_DIR=$wt "$top/scripts/configure-qemu.sh"; } >"$log" 2>&1 ||
    { tail -n 20 "$log"; exit 1; }
ninja -C "$wt/build" qemu-system-x86_64 >>"$log" 2>&1 ||
    { tail -n 20 "$log"; echo "build-base-qemu: build failed"; exit 1; }
mkdir -p "$out"
cp "$wt/build/qemu-system-x86_64" "$out/qemu-system-x86_64.new"
mv "$out/qemu-system-x86_64.new" "$out/qemu-system-x86_64"
echo "$rev" >"$out/.rev"
echo "build-base-qemu: ready: build/peers/base-7.2/qemu-system-x86_64"
