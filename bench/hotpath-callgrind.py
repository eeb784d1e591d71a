#!/usr/bin/env python3
"""Instruction counts of the TCG hot path (bench item 7b) under callgrind.

    bench/hotpath-callgrind.py run BINARY on|off|none OUT [MIB PASSES]
    bench/hotpath-callgrind.py compare OUT_A OUT_B [ROWS]

'run' boots the test guest of item 7b (boot RAM on node 0, the device as
node 1) with BINARY under valgrind's callgrind, plugs 1 GiB and counts
instructions only while the guest runs `memrun -m MIB -s PASSES` (default
64 MiB, 2 passes: ~3 min here, the boot ~100 s of it).  on / off set
dynamic-memslots, none leaves the property out (a binary without the
series).  The device is 16 GiB, not item 7b's 1 TiB: valgrind cannot map
a 1 TiB backend.  Use unstripped binaries (the lean builds of build/bin
and build/peers/base-7.2, or the package build's b/qemu/qemu-system-x86_64
under build/deb-src*/qemu-*/), or the functions have no names.  The guest boots with no_timer_check: slowed down by
valgrind, its kernel otherwise panics now and then in that check ("IO-APIC
+ timer doesn't work").

'compare' prints, for every function called more than 20000 times in both
profiles, the instructions per call (inclusive) side by side, largest
change (weighted by calls) first, ROWS of them (default 40).  The guest
does not run the same instructions twice (timer interrupts, TB cache
misses; more interrupts when the machine is busy and the guest runs
slower), so totals of two runs differ; the cost of one call of QEMU's own
functions does not.
"""
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import lib  # noqa: E402 pylint: disable=C0413
import run as bench  # noqa: E402 pylint: disable=C0413

# A binary run from its build directory does not find Debian's firmware.
FW_DIRS = ['/usr/share/seabios', '/usr/share/qemu', '/usr/lib/ipxe/qemu']


def do_run(binary, dyn, out, mib, passes):
    out = os.path.abspath(out)
    wrap = f'{out}.wrap.sh'
    fw = ' '.join(f'-L {d}' for d in FW_DIRS)
    with open(wrap, 'w', encoding='utf-8') as f:
        f.write('#!/bin/sh\nexec valgrind -q --tool=callgrind '
                '--instr-atstart=no --smc-check=all-non-file '
                f'--separate-threads=no --callgrind-out-file={out} '
                f'{binary} {fw} "$@"\n')
    os.chmod(wrap, 0o755)
    cfg = lib.Config('x', 'x', wrap, None if dyn == 'none' else dyn == 'on')
    t0 = time.monotonic()
    try:
        # no_timer_check: see above
        with bench.tcg_guest(cfg, 16 * bench.GiB, 2 * bench.GiB,
                             'no_timer_check') as vm:
            print(f'booted under valgrind: {time.monotonic() - t0:.0f} s',
                  flush=True)
            bench.guest_plug(vm, bench.GiB)
            pid = subprocess.run(['pgrep', '-f', f'callgrind-out-file={out} '],
                                 capture_output=True, text=True,
                                 check=True).stdout.split()[0]
            ctl = ['callgrind_control']
            subprocess.run(ctl + ['-i', 'on', pid], check=True,
                           capture_output=True)
            figs = bench.memrun(vm, f'-m {mib} -s {passes}', timeout=3600)
            subprocess.run(ctl + ['-i', 'off', pid], check=True,
                           capture_output=True)
            subprocess.run(ctl + ['-d', pid], check=True, capture_output=True)
            time.sleep(5)   # the dump is written asynchronously
            print(f'memrun -m {mib} -s {passes}: {figs}', flush=True)
    finally:
        os.unlink(wrap)
    dumps = sorted(p for p in os.listdir(os.path.dirname(out))
                   if p.startswith(os.path.basename(out) + '.'))
    print('profile:', ' '.join(os.path.join(os.path.dirname(out), p)
                               for p in dumps))


LINE = re.compile(r'\s*([\d,]+)\s+\([^)]*\)\s+([<*>])\s+(\S+?)'
                  r'(?: \(([\d,]+)x\))?(?: \[.*)?$')


def per_call(profile):
    """{function: (inclusive Ir, calls)} from callgrind_annotate's caller
    tree: the '<' lines above a '*' line are its callers, with counts."""
    text = subprocess.run(['callgrind_annotate', '--tree=caller',
                           '--inclusive=yes', '--threshold=100', profile],
                          capture_output=True, text=True, check=True).stdout
    res = {}
    calls = 0
    for line in text.splitlines():
        if line.endswith('PROGRAM TOTALS'):
            res['TOTAL'] = (int(line.split()[0].replace(',', '')), 1)
        m = LINE.match(line.rstrip())
        if not m:
            continue
        kind, fn = m.group(2), m.group(3)
        if kind == '<':
            calls += int((m.group(4) or '0').replace(',', ''))
        elif kind == '*':
            # Lines inlined from a header show up again under the header's
            # name (ram_addr.h:tlb_set_page_full, no calls): they are part
            # of the function's inclusive cost already, keep them apart.
            fn = re.sub(r'^.*/(\.\./)*', '', fn)
            res[fn] = (int(m.group(1).replace(',', '')), calls)
            calls = 0
        else:
            calls = 0
    return res


def dump_of(path):
    """The last dump of OUT (callgrind_control -d writes OUT.1, ...)."""
    if os.path.exists(path) and os.path.getsize(path):
        return path
    d, b = os.path.split(os.path.abspath(path))
    dumps = sorted((p for p in os.listdir(d) if p.startswith(b + '.')
                    and p[len(b) + 1:].isdigit()),
                   key=lambda p: int(p[len(b) + 1:]))
    if not dumps:
        sys.exit(f'hotpath-callgrind: no profile {path} or {path}.N')
    return os.path.join(d, dumps[-1])


def do_compare(pa, pb, nrows=40):
    a, b = per_call(dump_of(pa)), per_call(dump_of(pb))
    print(f'A: {pa}\nB: {pb}')
    print(f'instructions counted: A {a["TOTAL"][0]:,} B {b["TOTAL"][0]:,}')
    rows = []
    for fn in set(a) & set(b):
        (ia, ca), (ib, cb) = a[fn], b[fn]
        if ca > 20000 and cb > 20000:
            rows.append((ib / cb - ia / ca, fn, ca, cb, ia / ca, ib / cb))
    rows.sort(key=lambda r: -abs(r[0]) * (r[2] + r[3]))
    print(f'{"function":56} {"calls A":>10} {"calls B":>10} '
          f'{"Ir/call A":>10} {"Ir/call B":>10} {"B-A":>7}')
    for d, fn, ca, cb, xa, xb in rows[:nrows]:
        print(f'{fn[:56]:56} {ca:>10,} {cb:>10,} {xa:>10.1f} {xb:>10.1f} '
              f'{d:>+7.1f}')


def main():
    args = sys.argv[1:]
    if len(args) in (4, 6) and args[0] == 'run' and \
            args[2] in ('on', 'off', 'none'):
        mib, passes = (int(args[4]), int(args[5])) if len(args) == 6 \
            else (64, 2)
        do_run(args[1], args[2], args[3], mib, passes)
    elif len(args) in (3, 4) and args[0] == 'compare':
        do_compare(args[1], args[2], int(args[3]) if len(args) == 4 else 40)
    else:
        sys.exit(__doc__.split('\n\n')[1])


if __name__ == '__main__':
    main()
