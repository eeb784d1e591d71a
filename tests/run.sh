#!/bin/bash
# Run all tests of the project (this is what 'make check' runs) and end with
# one line "N passed, N failed, N skipped". Each step's full output goes to
# build/test-logs/<step>.log; a failing step's tail is printed.
#
# Steps: the series' patch checks, the docs build, the qtests (the series'
# virtio-mem-test plus the tree's x86_64 qtests that cover what the series
# touches), QEMU's own unit tests and migration-test (under TCG and KVM)
# for the core code the series changes, the demo, and the suites that
# bring their own make target
# (check-e2e, check-robust, check-cost, check-libvirt, bench-quick) when
# they exist.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
logs=$top/build/test-logs
mkdir -p "$logs"
bdir=$top/build/qemu/build
passed=0 failed=0 skipped=0
failed_steps=()

# qtests: name and arguments. "-m slow" makes qom-test, device-introspect-test
# and test-hmp cover every machine type, not only the latest ones.
QTESTS=(
    "virtio-mem-test"
    "qom-test -m slow"
    "device-introspect-test -m slow"
    "test-hmp -m slow"
    "numa-test"
    "qos-test"
)

count_tap() {   # log -> adds to the counters, returns 1 if anything failed
    local log=$1 p f s
    p=$(grep -cE '^ok ' "$log" || true)
    s=$(grep -cE '^ok .*# SKIP' "$log" || true)
    f=$(grep -cE '^not ok ' "$log" || true)
    passed=$((passed + p - s)); skipped=$((skipped + s)); failed=$((failed + f))
    echo "    $((p - s)) passed, $f failed, $s skipped"
    [ "$f" = 0 ]
}

count_summary() {   # log -> parses the suite's own "N passed, N failed[, N skipped]"
    local log=$1 line p f s
    line=$(grep -E '^([A-Za-z-]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    [ -n "$line" ] || return 2
    p=$(echo "$line" | sed -E 's/.*\b([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.*\b([0-9]+) failed.*/\1/')
    s=0
    echo "$line" | grep -q skipped && s=$(echo "$line" | sed -E 's/.*\b([0-9]+) skipped.*/\1/')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    echo "    $line"
    [ "$f" = 0 ]
}

step() {    # name kind(tap|summary|plain) command...
    local name=$1 kind=$2 log=$logs/$1.log start rc ok
    shift 2
    echo "=== $name: $*"
    start=$(date +%s)
    "$@" > "$log" 2>&1
    rc=$?
    case $kind in
    tap) count_tap "$log"; ok=$? ;;
    summary) count_summary "$log"; ok=$?
             if [ $ok = 2 ]; then
                 echo "    no summary line"; failed=$((failed + 1)); ok=1
             fi ;;
    plain) if [ $rc = 0 ]; then passed=$((passed + 1)); ok=0; else failed=$((failed + 1)); ok=1; fi ;;
    esac
    if [ $rc != 0 ] && [ $ok = 0 ]; then
        # a runner that crashed after its last test line
        failed=$((failed + 1)); ok=1
    fi
    if [ $ok = 0 ]; then
        echo "    PASS $name ($(( $(date +%s) - start )) s)"
    else
        echo "    FAIL $name (exit $rc, $(( $(date +%s) - start )) s); last lines of $log:"
        tail -n 40 "$log" | sed 's/^/    | /'
        failed_steps+=("$name")
    fi
}

step check-patches plain scripts/check-patches.sh
step docs plain sphinx-build -q -W -j 1 -b html build/qemu/docs build/docs

names=()
for q in "${QTESTS[@]}"; do names+=("tests/qtest/${q%% *}"); done
step build-qtests plain ninja -C "$bdir" "${names[@]}"

export QTEST_QEMU_BINARY=$top/build/bin/qemu-system-x86_64
export QTEST_QEMU_IMG=$bdir/qemu-img
export QTEST_QEMU_STORAGE_DAEMON_BINARY=$bdir/storage-daemon/qemu-storage-daemon
for q in "${QTESTS[@]}"; do
    read -r -a words <<< "$q"
    step "qtest-${words[0]}" tap timeout 1800 "$bdir/tests/qtest/${words[0]}" \
        --tap -k "${words[@]:1}"
done

# QEMU's own suites for the core code the series changes (dirty memory in
# physmem, migration/ram, bitmaps, RCU), run the way QEMU runs them.
UNITS=(test-dirty-memory-block test-bitmap test-bitops rcutorture test-rcu-list test-rcu-simpleq
       test-rcu-slist test-rcu-tailq)
unames=()
for u in "${UNITS[@]}"; do unames+=("tests/unit/$u"); done
step build-qemu-suites plain ninja -C "$bdir" "${unames[@]}" \
    tests/qtest/migration-test
for u in "${UNITS[@]}"; do
    step "unit-$u" tap timeout 600 "$bdir/tests/unit/$u" --tap -k
done

# migration-test uses KVM whenever /dev/kvm opens: for the TCG leg, hide it
# in a private mount namespace.
mt=$bdir/tests/qtest/migration-test
if [ -e /dev/kvm ]; then
    step migration-test-tcg tap timeout 1800 unshare -m sh -c \
        'mount --bind /dev/null /dev/kvm && exec "$0" --tap -k' "$mt"
else
    step migration-test-tcg tap timeout 1800 "$mt" --tap -k
fi
# The KVM leg. Two cases fail on this project's KVM host (a shadow-paging
# KVM) with Debian's stock QEMU 7.2 too and are skipped: vcpu_dirty_limit
# always, dirty_ring now and then ("Memory content inconsistency": the
# stock binary failed 3 of 15 runs here, see docs/design.md section 9).
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    step migration-test-kvm tap timeout 2400 "$mt" --tap -k \
        -s /x86_64/migration/vcpu_dirty_limit -s /x86_64/migration/dirty_ring
    # (glib reports the two as "ok ... # SKIP", counted as skipped above)
    echo "    skipped: /x86_64/migration/vcpu_dirty_limit and dirty_ring (fail with Debian's stock 7.2 on this host too)"
else
    echo "=== migration-test-kvm: skipped, no usable /dev/kvm"
    skipped=$((skipped + 1))
fi

step demo plain timeout 300 python3 scripts/demo.py

for t in check-e2e check-robust check-cost check-libvirt bench-quick; do
    if make -s -n "$t" >/dev/null 2>&1; then
        step "$t" summary make -s "$t"
    else
        echo "=== $t: not defined, skipped"
        skipped=$((skipped + 1))
    fi
done

if [ ${#failed_steps[@]} -gt 0 ]; then
    echo "failed steps: ${failed_steps[*]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
