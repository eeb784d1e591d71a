#!/bin/bash
# check-asan: build QEMU (the series' tree, build/qemu) with AddressSanitizer
# and UndefinedBehaviorSanitizer in build/qemu/build-asan, then run on it:
#   - the series' virtio-mem qtest (itself built with the sanitizers)
#   - the request fuzzer's short run
#   - the vhost-user interplay test
#   - the bad-configuration table (without leak detection)
#   - one real-guest plug/unplug cycle (tests/robust/guest_cycle.py, TCG)
# and fail on any sanitizer report ("runtime error:", AddressSanitizer,
# LeakSanitizer) in their output.
# Usage: asan.sh FUZZER VHOST_TEST VUB32 VUB64 VUB509 VUB1024 [OUTDIR]
set -u
fuzz=$1 vhost=$2 vub32=$3 vub64=$4 vub509=$5 vub1024=$6
top=$(cd "$(dirname "$0")/../.." && pwd)
out=${7:-$top/build/robust}/asan
src=${ROBUST_ASAN_SRC:-$top/build/qemu}
bdir=${ROBUST_ASAN_BUILD:-$src/build-asan}
mkdir -p "$out"
t0=$(date +%s)

if [ ! -f "$bdir/build.ninja" ]; then
    echo "configuring $bdir (QEMU_SANITIZE=1)"
    QEMU_SANITIZE=1 QEMU_SRC_DIR=$src QEMU_BUILD_DIR=$bdir \
        "$top/scripts/configure-qemu.sh" > "$out/configure.log" 2>&1 ||
        { tail -n 30 "$out/configure.log"; exit 1; }
fi
echo "building qemu-system-x86_64 and virtio-mem-test in $bdir"
ninja -C "$bdir" qemu-system-x86_64 tests/qtest/virtio-mem-test \
    > "$out/build.log" 2>&1 || { tail -n 30 "$out/build.log"; exit 1; }
tb=$(date +%s)
echo "build: $((tb - t0)) s"
# Outside the build tree the binary finds Debian's firmware (as build/bin)
cp "$bdir/qemu-system-x86_64" "$out/qemu-system-x86_64.tmp" &&
    mv "$out/qemu-system-x86_64.tmp" "$out/qemu-system-x86_64"
qemu=$out/qemu-system-x86_64

# Leaks are reported too: QEMU exits normally after qtest_quit and 'quit'.
# Glib has no frame pointers: the slow unwinder gives leak stacks that the
# suppressions (known leaks of 7.2 itself, see lsan.supp) can match.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:print_summary=1:fast_unwind_on_malloc=0}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$top/tests/robust/lsan.supp:print_suppressions=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
passed=0 failed=0
step() {   # name command...
    local name=$1 log=$out/$1.log s rc n
    shift
    s=$(date +%s)
    "$@" > "$log" 2>&1
    rc=$?
    n=$(grep -cE 'runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer' "$log")
    if [ $rc = 0 ] && [ "$n" = 0 ]; then
        passed=$((passed + 1))
        echo "PASS $name ($(( $(date +%s) - s )) s)"
    else
        failed=$((failed + 1))
        echo "FAIL $name (exit $rc, $n sanitizer reports, $(( $(date +%s) - s )) s): $log"
        grep -E -A12 'runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer' "$log" | head -n 60 | sed 's/^/    | /'
        tail -n 10 "$log" | sed 's/^/    | /'
    fi
}
step virtio-mem-test env QTEST_QEMU_BINARY="$qemu" "$bdir/tests/qtest/virtio-mem-test"
# The fuzzer only: its regression tests are check-robust's business
step fuzz-short env QTEST_QEMU_BINARY="$qemu" FUZZ_SEED="${ROBUST_SEED:-1}" FUZZ_ONLY=1 \
    FUZZ_REQUESTS="${ROBUST_ASAN_REQUESTS:-10000}" FUZZ_SEQ_LEN=1000 \
    FUZZ_CHECK_EVERY=100 "$fuzz"
step vhost-user env QTEST_QEMU_BINARY="$qemu" VHOST_USER_BLK_32="$vub32" VHOST_USER_BLK_64="$vub64" \
    VHOST_USER_BLK_509="$vub509" VHOST_USER_BLK_1024="$vub1024" "$vhost"
# Error exits leak by design (QEMU exits without freeing): no leak check here
step configs env ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 ROBUST_SANITIZERS=1 \
    python3 "$top/tests/robust/configs.py" --qemu "$qemu"
step guest-cycle env QEMU_BINARY="$qemu" GUEST_CYCLE_TIMEOUT=600 \
    python3 "$top/tests/robust/guest_cycle.py"
echo "check-asan: build $((tb - t0)) s, tests $(( $(date +%s) - tb )) s"
echo "asan: $passed passed, $failed failed"
[ "$failed" = 0 ]
