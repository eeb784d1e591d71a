"""Real-guest test 8: self-modifying code in hot-plugged memory under TCG.

TCG decides from the dirty bits of the code client whether a guest write
hits a page it has translated code from (and must invalidate that code); a
page the guest plugs must behave like boot RAM.  The guest's helper
/bin/smc (tests/e2e/guest/smc.c, built by scripts/build-guest.sh) binds a
memfd, mapped twice at fixed addresses, to the virtio-mem device's NUMA
node, writes x86-64 functions into it, runs them, rewrites them (immediates
and an opcode, through either mapping, one instruction across a page
boundary) and runs them again, ROUNDS times, and prints the guest-physical
address of every code page.

The guest has two NUMA nodes: boot RAM on node 0, the virtio-mem device on
node 1 (nothing else).  For dynamic-memslots on and off: plug PLUG, run the
helper, check it passed and that every code page lies in memory the device
has plugged; offline the device's first GiB in the guest and run it again
(its code now in the second GiB: the second memslot with on), online it
again; unplug everything and plug again (the same physical pages are
likely to come back, now holding translations of the first run's code at
the same virtual addresses) and run it again.
"""

import re

from e2elib import (GiB, test, memdev_args, vmem_args, set_requested,
                    settle, online_blocks, fmt)

BOOT = '1G'
DEV_SIZE = 4 * GiB
PLUG = 2 * GiB
ROUNDS = 1000
STEPS = ('imm-A', 'imm-B', 'opcode', 'straddle')
_PAGE_RE = re.compile(r'^smc: page (\d+) phys 0x([0-9a-f]+) node (-?\d+)',
                      re.M)


def numa_args():
    """Boot RAM on node 0, node 1 without memory of its own."""
    return ['-object', f'memory-backend-ram,id=ram0,size={BOOT}',
            '-numa', 'node,nodeid=0,memdev=ram0', '-numa', 'node,nodeid=1']


def run_smc(t, vm, st, what, low=0):
    """Run the helper once; check its verdicts and that its code was in
    the device's plugged memory, at least `low` bytes into the device.
    Returns the physical addresses of its pages (first placement)."""
    rc, out = vm.run(f'smc -n 1 -i {ROUNDS}', timeout=300)
    for line in out.splitlines():
        if 'FAIL' in line or line.startswith('smc: PASS'):
            t.log(f'{what}: {line}')
    t.check(rc == 0, f'{what}: smc exited with {rc}:\n{out}')
    for step in STEPS:
        t.check(re.search(rf'^smc: PASS {step}: .* {ROUNDS} rounds, .* '
                          r'0 mismatches$', out, re.M),
                f'{what}: no PASS line for step {step}:\n{out}')
    pages = [(int(i), int(pa, 16), int(node))
             for i, pa, node in _PAGE_RE.findall(out)]
    t.eq(len(pages), 8, f'{what}: placement lines (4 pages, before and '
                        'after)')
    info = st['info']
    base, end = info['memaddr'], info['memaddr'] + info['max-size']
    slot = info.get('memslot-size')
    for i, pa, node in pages:
        where = f'{what}: code page {i} at guest-physical {pa:#x}'
        t.check(base + low <= pa < end,
                f'{where} is outside the device [{base:#x}, {end:#x})'
                + (f' or in its first {fmt(low)}' if low else ''))
        t.check(any(s <= pa and pa + 4095 <= e for s, e in st['ranges']),
                f'{where} is not in the plugged memory of the device '
                f'{[(hex(s), hex(e)) for s, e in st["ranges"]]}')
        t.eq(node, 1, f'{where}: NUMA node')
    t.log(f'{what}: code pages at ' + ', '.join(
        f'{pa:#x}' + (f' (memslot {(pa - base) // slot})' if slot else '')
        for _, pa, _ in pages[:4]) + f'; device at {base:#x}, '
        f'{fmt(info["size"])} plugged')
    return [pa for _, pa, _ in pages[:4]]


def smc_test(t, dynamic):
    vm = t.vm(memory=BOOT, maxmem=f'{(1 + DEV_SIZE // GiB)}G',
              extra_args=numa_args() + memdev_args('mem0', DEV_SIZE)
              + vmem_args('vmem0', 'mem0', dynamic, extra=',node=1'))
    set_requested(vm, 'vmem0', PLUG)
    st = settle(vm, 'vmem0', PLUG)
    t.eq(st['info']['node'], 1, 'vmem0 node (query-memory-devices)')
    _, out = vm.run('grep MemTotal /sys/devices/system/node/node1/meminfo',
                    check=True)
    node1 = int(out.split()[-2]) * 1024
    t.check(0 < node1 <= PLUG, f'guest node 1 MemTotal {fmt(node1)}, want '
                               f'the plugged {fmt(PLUG)} (at most)')
    first = run_smc(t, vm, st, 'first plug')
    # Offline the device's first GiB in the guest: node 1's memory is then
    # all in the second GiB (with on: the second memslot), and so is the
    # code.  Then online it again.
    bs, online = online_blocks(vm)
    low = [b for b in online
           if st['base'] <= b * bs < st['base'] + 1 * GiB]
    t.eq(len(low) * bs, 1 * GiB, 'online memory blocks in the first GiB '
                                 'of the device')
    sysfs = '/sys/devices/system/memory/memory'
    vm.run(' && '.join(f'echo offline > {sysfs}{b}/state' for b in low),
           check=True, timeout=120)
    run_smc(t, vm, st, 'first GiB offline', low=1 * GiB)
    vm.run(' && '.join(f'echo online_movable > {sysfs}{b}/state'
                       for b in low), check=True, timeout=120)
    t.eq(online_blocks(vm)[1], online, 'online memory blocks after '
                                       'onlining the first GiB again')
    set_requested(vm, 'vmem0', 0)
    settle(vm, 'vmem0', 0)
    set_requested(vm, 'vmem0', PLUG)
    st = settle(vm, 'vmem0', PLUG)
    again = run_smc(t, vm, st, 'plugged again')
    same = sum(a == b for a, b in zip(first, again))
    t.log(f'after unplug and plug: {same} of {len(first)} code pages at the '
          'same physical address as in the first run')


@test('8a-tcg-smc-code-in-plugged-memory-on')
def t8a_smc_on(t):
    smc_test(t, True)


@test('8b-tcg-smc-code-in-plugged-memory-off')
def t8b_smc_off(t):
    smc_test(t, False)
