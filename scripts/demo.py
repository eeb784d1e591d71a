#!/usr/bin/env python3
"""The project's demo: a 256 GiB virtio-mem device with dynamic-memslots=on.

Boots the tiny test guest (scripts/build-guest.sh) under TCG with

  -m 1G,maxmem=257G
  -object memory-backend-ram,id=mem0,size=256G,reserve=off
  -device virtio-mem-pci,id=vmem0,memdev=mem0,requested-size=0,
          dynamic-memslots=on

(unplugged-inaccessible stays 'auto', which means 'on' with
dynamic-memslots=on), then resizes the device 0 -> 4G -> 16G -> 1G -> 0 with
QMP qom-set on requested-size, and after each step shows the guest's
MemTotal, the device's size and memslots from query-memory-devices
(memslots, mapped-memslots, memslot-size) and the device's part of
`info mtree`.  With the series the device memory is a `virtio-mem` container
holding one `memslot-N` alias per mapped 1 GiB memslot, and the demo fails
unless mapped-memslots equals the number of those aliases, memslots is 256
and memslot-size 1 GiB.  Without the series (a binary with no
dynamic-memslots property) the demo runs anyway and shows the unpatched
layout: the whole 256 GiB memdev `mem0` mapped at once.

Run from the repo root: python3 scripts/demo.py   (QEMU_BINARY overrides the
binary).  Exits non-zero on any failure.
"""

import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'lib'))

from vmguest import GuestVM, VMError, default_binary  # noqa: E402

GiB = 1 << 30
STEPS = [0, 4 * GiB, 16 * GiB, 1 * GiB, 0]
DEV_PATH = '/machine/peripheral/vmem0'
STEP_TIMEOUT = 60
DEVICE_SIZE = 256 * GiB
MEMSLOT_SIZE = 1 * GiB  # 256 GiB filling maxmem: 256 memslots (design 5)


def fmt(n):
    """Bytes for humans: '16 GiB', '960.7 MiB', '0 B'."""
    for unit, size in (('GiB', GiB), ('MiB', 1 << 20), ('KiB', 1 << 10)):
        if n >= size:
            v = n / size
            return f'{v:.0f} {unit}' if v == int(v) else f'{v:.1f} {unit}'
    return f'{n} B'


def log(msg=''):
    print(msg, flush=True)


def has_device_property(binary, driver, prop):
    out = subprocess.run([binary, '-device', f'{driver},help'],
                         capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return any(line.strip().startswith(prop + '=') for line in out.splitlines())


def device_info(vm):
    for dev in vm.qmp('query-memory-devices'):
        if dev['type'] == 'virtio-mem' and dev['data'].get('id') == 'vmem0':
            return dev['data']
    raise vm.error('query-memory-devices does not list vmem0')


def wait_device_size(vm, want):
    start = time.monotonic()
    while True:
        info = device_info(vm)
        if info['size'] == want:
            return info, time.monotonic() - start
        if time.monotonic() - start > STEP_TIMEOUT:
            raise vm.error(
                f'vmem0 size is {fmt(info["size"])} after {STEP_TIMEOUT}s, '
                f'requested {fmt(want)}')
        time.sleep(0.2)


def stable_memtotal(vm):
    """Guest MemTotal once two reads 0.3 s apart agree (onlining may lag)."""
    last = vm.meminfo('MemTotal')
    for _ in range(30):
        time.sleep(0.3)
        cur = vm.meminfo('MemTotal')
        if cur == last:
            break
        last = cur
    return last


def device_mtree(vm):
    """The device-memory container line of `info mtree` and its subtree
    (first occurrence, i.e. in address-space 'memory')."""
    lines = vm.hmp('info mtree').splitlines()
    for i, line in enumerate(lines):
        if line.endswith('): device-memory'):
            indent = len(line) - len(line.lstrip())
            part = [line]
            for sub in lines[i + 1:]:
                if not sub.strip() or len(sub) - len(sub.lstrip()) <= indent:
                    break
                part.append(sub)
            return part
    return ['(no device-memory region in info mtree)']


def check_memslots(vm, info, aliases, dynamic):
    """(mapped-memslots, memslots) from query-memory-devices, checked against
    the memslot aliases in info mtree; None for a binary without the
    fields."""
    if 'memslots' not in info:
        if dynamic:
            log('  (this binary has no memslots fields in '
                'query-memory-devices)')
        return None
    got = (info['memslots'], info['memslot-size'])
    want = ((DEVICE_SIZE // MEMSLOT_SIZE, MEMSLOT_SIZE) if dynamic
            else (1, DEVICE_SIZE))
    if got != want:
        raise vm.error(f'query-memory-devices: memslots {got[0]}, '
                       f'memslot-size {got[1]}; want {want[0]}, {want[1]}')
    if dynamic and info['mapped-memslots'] != aliases:
        raise vm.error(f'query-memory-devices: mapped-memslots '
                       f'{info["mapped-memslots"]}, but info mtree shows '
                       f'{aliases} memslot aliases')
    return info['mapped-memslots'], info['memslots']


def main():
    t0 = time.monotonic()
    binary = default_binary()
    guest = os.path.join(ROOT, 'build', 'guest')
    if not os.path.exists(os.path.join(guest, 'initrd.img')):
        log('demo: building the test guest first (scripts/build-guest.sh)')
        subprocess.run([os.path.join(ROOT, 'scripts', 'build-guest.sh')],
                       check=True)
    with open(os.path.join(guest, 'kernel-version')) as f:
        kernel = f.read().strip()
    version = subprocess.run([binary, '--version'], capture_output=True,
                             text=True, timeout=30, check=True
                             ).stdout.splitlines()[0]

    log('== virtio-mem dynamic-memslots demo ==')
    log(f'QEMU:  {binary}\n       {version}')
    log(f'guest: {kernel}')
    dev = 'virtio-mem-pci,id=vmem0,memdev=mem0,requested-size=0'
    dynamic = has_device_property(binary, 'virtio-mem-pci', 'dynamic-memslots')
    if dynamic:
        dev += ',dynamic-memslots=on'
        log('dynamic-memslots: supported by this binary -> dynamic-memslots=on')
    else:
        dev += ',unplugged-inaccessible=on'
        log('NOTE: this binary has no virtio-mem-pci property '
            "'dynamic-memslots' (the series is not in it).\n"
            '      Running without it: expect the unpatched layout, the whole '
            '256 GiB memdev mapped as one region.')

    vm = GuestVM(binary=binary, memory='1G', maxmem='257G', extra_args=[
        '-object', 'memory-backend-ram,id=mem0,size=256G,reserve=off',
        '-device', dev])
    summary = []
    log('\nbooting the guest under TCG ...')
    with vm:
        log(f'QEMU command line:\n  {vm.cmdline}')
        log(f'guest booted and ready in {vm.boot_seconds:.1f} s')
        base = None
        for n, want in enumerate(STEPS, 1):
            log(f'\n--- step {n}/{len(STEPS)}: requested-size {fmt(want)} ---')
            log(f'  qom-set {DEV_PATH} requested-size {want}')
            vm.qmp('qom-set', path=DEV_PATH, property='requested-size',
                   value=want)
            info, took = wait_device_size(vm, want)
            log(f'  device size reached {fmt(want)} after {took:.1f} s')
            memtotal = stable_memtotal(vm)
            if base is None:
                base = memtotal
            mtree = device_mtree(vm)
            aliases = sum(1 for line in mtree if 'alias memslot-' in line)
            log(f'  guest MemTotal:  {fmt(memtotal)} '
                f'({"+" if memtotal >= base else "-"}'
                f'{fmt(abs(memtotal - base))} vs. the first step)')
            log(f'  query-memory-devices vmem0: size {fmt(info["size"])}, '
                f'requested-size {fmt(info["requested-size"])}, '
                f'max-size {fmt(info["max-size"])}, '
                f'block-size {fmt(info["block-size"])}')
            slots = check_memslots(vm, info, aliases, dynamic)
            if slots:
                log(f'  query-memory-devices vmem0: memslots {slots[1]}, '
                    f'mapped-memslots {slots[0]}, memslot-size '
                    f'{fmt(info["memslot-size"])} (info mtree: {aliases} '
                    'memslot aliases mapped, agrees)')
            log('  info mtree, device memory:')
            indent = len(mtree[0]) - len(mtree[0].lstrip())
            for line in mtree:
                log('    ' + line[indent:])
            summary.append((fmt(want), fmt(info['size']), fmt(memtotal),
                            str(aliases) if dynamic else '-',
                            f'{slots[0]}/{slots[1]}' if slots else '-'))

    log('\n--- summary ---')
    head = ('requested', 'device size', 'guest MemTotal', 'memslot aliases',
            'mapped/memslots (QMP)')
    rows = [head] + summary
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        log('  ' + '  '.join(c.rjust(w) for c, w in zip(r, widths)))
    log(f'\ndemo finished OK in {time.monotonic() - t0:.1f} s')
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (VMError, subprocess.SubprocessError, OSError) as exc:
        print(f'\ndemo FAILED: {exc}', file=sys.stderr)
        sys.exit(1)
