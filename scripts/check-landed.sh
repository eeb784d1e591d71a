#!/bin/sh
# Run the tests that issue 17 added against the series as it had landed
# before that issue (the patches/ of commit $LANDED_REV, 24 patches) and
# against the current series.  Each test must pass on the current series;
# on the landed one it must fail where it finds a bug of it and pass where
# it is a control (the table says which is which).  Prints a table.
#
#   make check-landed              (or scripts/check-landed.sh)
#   LANDED_REV=<commit> make check-landed
#
# The landed QEMU is built in a worktree of its own (build/landed, its own
# build directory; build/qemu is not touched): a full build of
# qemu-system-x86_64 the first time, nothing afterwards.  The tests are the
# current tree's: the qtest binary (build/qemu/build/tests/qtest/
# virtio-mem-test) only talks to the QEMU it starts, so it runs against
# either binary through QTEST_QEMU_BINARY; the e2e tests take QEMU_BINARY.
# Each qtest case runs alone (-p): a migration that never completes fails
# the case after the test's own 120 s deadline.
#
# Not in 'make check' (the landed cases that hang take 2 minutes each;
# ~20 minutes in all).  Needs the current build (make) and the guest (make
# guest).  Exit status 1 if a test fails on the current series or does on
# the landed one what the table does not expect.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
rev=${LANDED_REV:-1422da2}
tree=$top/build/qemu
wt=$top/build/landed
bin=$top/build/landed-bin/qemu-system-x86_64
fixed=$top/build/bin/qemu-system-x86_64
qtest=$tree/build/tests/qtest/virtio-mem-test
log=$top/build/landed.log
say() { echo "check-landed: $*"; }

[ -x "$fixed" ] || { say "$fixed is missing: run make first" >&2; exit 1; }
ninja -C "$tree/build" tests/qtest/virtio-mem-test >/dev/null ||
    { say "cannot build $qtest" >&2; exit 1; }
git -C "$top" rev-parse -q --verify "$rev^{commit}" >/dev/null ||
    { say "no commit $rev in $top" >&2; exit 1; }

# --- 1. the landed series, built ------------------------------------------
want=$(git -C "$top" rev-parse "$rev:patches")
if [ "$(cat "$wt/.landed-patches" 2>/dev/null)" != "$want" ]; then
    say "applying the series of $rev to base in $wt"
    if [ -d "$wt" ]; then
        git -C "$wt" am --abort >/dev/null 2>&1 || true
        git -C "$wt" checkout -q --detach base
    else
        git -C "$tree" worktree add -q --detach "$wt" base
    fi
    n=0
    for p in $(git -C "$top" show "$rev:patches/series" | grep -v '^#' | grep .); do
        git -C "$top" show "$rev:patches/$p" |
            git -C "$wt" -c user.name=check -c user.email=check@invalid am -q
        n=$((n + 1))
    done
    say "$n patches applied"
    echo "$want" >"$wt/.landed-patches"
fi
if [ ! -f "$wt/build/build.ninja" ]; then
    say "configuring $wt (log: $log)"
    QEMU_SRC_DIR=$wt "$top/scripts/configure-qemu.sh" >"$log" 2>&1 ||
        { tail -n 20 "$log"; exit 1; }
fi
say "building the landed qemu-system-x86_64 (a few minutes the first time)"
ninja -C "$wt/build" qemu-system-x86_64 >>"$log" 2>&1 ||
    { tail -n 20 "$log"; exit 1; }
# The binary finds Debian's firmware only outside its build tree (there it
# looks in build/pc-bios first).
mkdir -p "$(dirname "$bin")"
cmp -s "$wt/build/qemu-system-x86_64" "$bin" ||
    cp "$wt/build/qemu-system-x86_64" "$bin"

# --- 2. the tests, on both -----------------------------------------------
# The qtest cases of tests/qtest/virtio-mem-test that issue 17 added (patch
# 25) and its e2e tests, each with what it must do on the landed series:
# "fail" with the given text in its log (it finds a bug of the landed
# series; the issue's finding in brackets) or "pass" (a control the landed
# series already got right, as the issue's own table says for the dirty
# ring and for off).  A skipped test decides nothing and counts as bad.
NOTDONE="waiting for 'completed'"
CASES="
kvm/migration/precopy:fail:$NOTDONE:[the table: never completes]
kvm/migration/precopy-off:pass::[the table: off completes]
kvm/migration/dirty-ring:pass::[the table: a dirty ring completes]
kvm/migration/multifd:fail:$NOTDONE:[the table, multifd]
kvm/migration/postcopy:fail:$NOTDONE:[the table, postcopy]
kvm/migration/postcopy-recover:fail:$NOTDONE:[1: recovery never completes]
kvm/migration/background-snapshot:pass::[no dirty log: completes]
kvm/migration/unplugged-writes:fail:$NOTDONE:[the table: its precopy under KVM]
on/migration/postcopy-recover:fail:$NOTDONE:[1, without KVM]
on/migration/unplugged-writes:pass::[2: exact under the qtest accelerator]
e2e/7b-kvm-to-kvm-migration-half-plugged-memslot:fail:migration not done after:[the table, real guest state]
e2e/10d-tcg-device_del-device_add-stale-code:fail:memory devices cannot be unplugged:[3, but it stops at device_del, which the landed series refuses]
"

run_one() {     # label binary test -> prints pass, FAIL or skip; log in $l
    l=$top/build/landed-$1-$(echo "$3" | tr / _).log
    case $3 in
    e2e/*)
        QEMU_BINARY=$2 timeout 900 python3 "$top/tests/e2e/run.py" \
            "${3#e2e/}" >"$l" 2>&1 </dev/null || true
        if grep -q '^0 passed, 0 failed, 1 skipped' "$l"; then echo skip
        elif grep -q '^1 passed, 0 failed' "$l"; then echo pass
        else echo FAIL; fi
        ;;
    *)
        QTEST_QEMU_BINARY=$2 timeout 600 "$qtest" --tap \
            -p "/x86_64/virtio-mem/$3" >"$l" 2>&1 </dev/null || true
        if grep -q '^ok .*# SKIP' "$l"; then echo skip
        elif grep -q '^ok ' "$l" && ! grep -q '^not ok' "$l"; then echo pass
        else echo FAIL; fi
        ;;
    esac
}

bad=0
printf '%-50s %-7s %-7s %s\n' test landed current 'expected on landed'
while IFS=: read -r t expect text why; do
    [ -n "$t" ] || continue
    r_landed=$(run_one landed "$bin" "$t")
    r_current=$(run_one current "$fixed" "$t")
    verdict=
    case $expect:$r_landed in
    pass:pass) ;;
    fail:FAIL)
        grep -qF "$text" "$top/build/landed-landed-$(echo "$t" | tr / _).log" ||
            { verdict=" <- landed: failed without \"$text\""; bad=1; }
        ;;
    *) verdict=" <- landed: want $expect"; bad=1 ;;
    esac
    if [ "$r_current" != pass ]; then
        verdict="$verdict <- current: $r_current"; bad=1
    fi
    printf '%-50s %-7s %-7s %s%s\n' "$t" "$r_landed" "$r_current" \
        "$expect $why" "$verdict"
done <<EOF
$CASES
EOF
say "logs: build/landed-{landed,current}-<test>.log"
exit $bad
