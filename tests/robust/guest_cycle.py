#!/usr/bin/env python3
"""One real-guest plug/unplug cycle with dynamic-memslots=on.

Boots the test guest (scripts/build-guest.sh) under TCG with an 8 GiB
virtio-mem device, asks for 2 GiB, waits until the guest plugged them and
checks that exactly the memslots 0 and 1 are mapped, asks for 0 and waits
until the guest unplugged everything and no memslot is mapped, then a system
reset and a clean QMP quit. Fails on any sanitizer report in QEMU's output
(meant for the ASan/UBSan build: QEMU_BINARY=... guest_cycle.py).
Ends with 'N passed, N failed'.
"""

import os
import re
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'lib'))

from vmguest import GuestVM  # noqa: E402

GiB = 1 << 30
DEV = '/machine/peripheral/vmem0'
SANITIZER = re.compile(r'runtime error:|AddressSanitizer|LeakSanitizer|'
                       r'Assertion .* failed|\*\* ERROR')


def wait_size(vm, want, timeout):
    start = time.monotonic()
    while True:
        size = vm.qmp('qom-get', path=DEV, property='size')
        if size == want:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise vm.error(f'size {size}, want {want} after {timeout} s')
        time.sleep(0.5)


def main():
    timeout = float(os.environ.get('GUEST_CYCLE_TIMEOUT', '300'))
    vm = GuestVM(memory='1G', maxmem='9G', boot_timeout=timeout,
                 qmp_timeout=timeout, extra_args=[
                     '-object', 'memory-backend-ram,id=mem0,size=8G,'
                     'reserve=off',
                     '-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,'
                     'requested-size=0,unplugged-inaccessible=on,'
                     'dynamic-memslots=on'])
    ok = False
    with vm:
        print(f'booted in {vm.boot_seconds:.1f} s: {vm.binary}', flush=True)
        vm.qmp('qom-set', path=DEV, property='requested-size', value=2 * GiB)
        took = wait_size(vm, 2 * GiB, timeout)
        slots = [r['index'] for r in vm.mapped_memslots('mem0')]
        print(f'plugged 2 GiB in {took:.1f} s; mapped memslots: {slots}',
              flush=True)
        vm.qmp('qom-set', path=DEV, property='requested-size', value=0)
        took = wait_size(vm, 0, timeout)
        after = [r['index'] for r in vm.mapped_memslots('mem0')]
        print(f'unplugged in {took:.1f} s; mapped memslots: {after}',
              flush=True)
        vm.system_reset()
        vm.qmp_raw('quit')
        for _ in range(600):
            if not vm.is_running():
                break
            time.sleep(0.1)
        out = vm.qemu_output()
        status = vm._popen.returncode  # pylint: disable=protected-access
        reports = [line for line in out.splitlines()
                   if SANITIZER.search(line)]
        print(f'QEMU exit status {status}; {len(reports)} sanitizer lines')
        for line in reports[:40]:
            print('  ' + line)
        ok = (len(slots) == 2 and not after and status == 0 and not reports)
    print('1 passed, 0 failed' if ok else '0 passed, 1 failed')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
