#!/bin/bash
# check-robust: the short robustness runs (part of 'make check').
#   1. the request fuzzer, seeded, ROBUST_SHORT_REQUESTS requests (20000),
#      with its regression tests; and 8000 requests under KVM (paused VMs)
#   2. the bad-configuration table (tests/robust/configs.tsv), and that
#      docs/robustness.md shows it
#   3. vhost-user interplay (tests/robust/vhost/vhost-user-memslots.c)
# Usage: run.sh QEMU FUZZER VHOST_TEST VUB32 VUB64 VUB509 VUB1024 [OUTDIR]
# Ends with one line "robust: N passed, N failed, N skipped".
set -u
qemu=$1 fuzz=$2 vhost=$3 vub32=$4 vub64=$5 vub509=$6 vub1024=$7 out=${8:-build/robust}
top=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
passed=0 failed=0 skipped=0

tap() {   # log: count TAP lines
    local p s f
    p=$(grep -cE '^ok ' "$1"); s=$(grep -cE '^ok .*# SKIP' "$1")
    f=$(grep -cE '^not ok |^Bail out' "$1")
    passed=$((passed + p - s)); skipped=$((skipped + s)); failed=$((failed + f))
    [ "$f" = 0 ] && [ "$p" -gt 0 ]
}

run() {   # name kind command...
    local name=$1 kind=$2 log=$out/$1.log start rc line
    shift 2
    start=$(date +%s)
    "$@" > "$log" 2>&1
    rc=$?
    case $kind in
    tap) tap "$log" || { [ $rc = 0 ] && failed=$((failed + 1)); rc=1; } ;;
    summary)
        line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
        if [ -n "$line" ]; then
            passed=$((passed + $(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')))
            failed=$((failed + $(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')))
            echo "$line" | grep -q skipped &&
                skipped=$((skipped + $(echo "$line" | sed -E 's/.* ([0-9]+) skipped.*/\1/')))
        else
            failed=$((failed + 1))
        fi ;;
    esac
    if [ $rc = 0 ]; then
        echo "PASS $name ($(( $(date +%s) - start )) s)"
    else
        echo "FAIL $name (exit $rc, $(( $(date +%s) - start )) s); last lines of $log:"
        tail -n 30 "$log" | sed 's/^/    | /'
    fi
    grep -E '^FUZZ-RESULT|^#   KVM:' "$log" || true
}

run robust-fuzz tap env QTEST_QEMU_BINARY="$qemu" \
    FUZZ_SEED="${ROBUST_SEED:-1}" FUZZ_REQUESTS="${ROBUST_SHORT_REQUESTS:-20000}" \
    FUZZ_SEQ_LEN=2000 FUZZ_CHECK_EVERY=100 "$fuzz"
# Under KVM too (paused VMs; small configurations): KVM's memslot accounting
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    run robust-fuzz-kvm tap env QTEST_QEMU_BINARY="$qemu" FUZZ_ACCEL=kvm \
        FUZZ_ONLY=1 FUZZ_SEED="${ROBUST_SEED:-1}" FUZZ_REQUESTS=8000 \
        FUZZ_SEQ_LEN=1000 FUZZ_CHECK_EVERY=100 \
        FUZZ_CONFIGS=8G,3.5G,4G-bs128M,3G-bs1G,2G-of-16G,512M,4G-off,2G-memfd \
        "$fuzz"
else
    echo "SKIP robust-fuzz-kvm: /dev/kvm not usable"
    skipped=$((skipped + 1))
fi
run robust-configs summary python3 "$top/tests/robust/configs.py" \
    --qemu "$qemu" --check-doc "$top/docs/robustness.md"
run robust-vhost tap env QTEST_QEMU_BINARY="$qemu" VHOST_USER_BLK_32="$vub32" \
    VHOST_USER_BLK_64="$vub64" VHOST_USER_BLK_509="$vub509" \
    VHOST_USER_BLK_1024="$vub1024" \
    QSD_BINARY="${QSD_BINARY:-$top/build/bin/qemu-storage-daemon}" "$vhost"
echo "robust: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
