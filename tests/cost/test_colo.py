"""Cost test 6: COLO with a virtio-mem device.

The review of round 4 asked what a COLO secondary costs with a large
virtio-mem device (virtio-mem's post_load replays every plugged block to
the RamDiscardListeners at each checkpoint, and the series' listener makes
them dirty).  It costs nothing, because COLO cannot run beside virtio-mem
at all, in 7.2 as upstream: the secondary must disable RAM discard
(ram_block_discard_disable(), migration/migration.c), which a device that
coordinates discards refuses.

colo-control: two QEMUs (-accel qtest, the VM runs, no vCPU executes), both
with capability x-colo (this build has replication for it), the primary
migrating into the secondary with x-checkpoint-delay 200 ms and no device:
both must reach COLO mode ('primary' / 'secondary') and stay there over
at least 3 checkpoints (trace event colo_flush_ram_cache_begin in the
secondary).  This shows the setup itself works.

colo-off, colo-on: the same with a 8 GiB virtio-mem device and 1 GiB
plugged on the primary (qtest driver).  Asserts the secondary exits,
saying "COLO: cannot disable RAM discard", the primary's migration fails
and the primary keeps running with its device unchanged (size, and with on
the mapped memslots).
"""

import os
import tempfile
import time

from costlib import (GiB, MiB, test, device_size, mapped_memslots, plug,
                     mode_name, MACHINE)

DEV = 8 * GiB
BOOT = 512 * MiB
DELAY_MS = 200
REFUSAL = 'COLO: cannot disable RAM discard'


def colo_args(dynamic):
    args = ['-machine', MACHINE, '-nodefaults', '-accel', 'qtest']
    if dynamic is None:
        return args + ['-m', f'{BOOT // MiB}M']
    return args + [
        '-m', f'{BOOT // MiB}M,maxmem={(BOOT + DEV) // MiB}M',
        '-object', f'memory-backend-ram,id=mem0,size={DEV // MiB}M,'
                   'reserve=off',
        '-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,requested-size=0,'
                   f'unplugged-inaccessible=on,'
                   f'dynamic-memslots={mode_name(dynamic)}']


def qemu_log(vm):
    """What the QEMU of `vm` printed so far (QEMUMachine's log file)."""
    # pylint: disable=protected-access
    path = getattr(vm.m, '_qemu_log_path', None)
    if path and os.path.exists(path):
        with open(path, errors='replace') as f:
            return f.read()
    return ''


def eq(t, got, want, what):
    t.check(got == want, f'{what}: {got!r}, want {want!r}')


def colo_mode(vm):
    return vm.qmp('query-colo-status')['mode']


def colo_case(t, dynamic):
    pri = t.vm(colo_args(dynamic), qtest=dynamic is not None, name='primary')
    # The secondary traces every checkpoint's flush of its RAM cache.
    sec = t.vm(colo_args(dynamic) + ['-incoming', 'defer', '-trace',
                                     'colo_flush_ram_cache_begin'],
               name='secondary')
    slots = None
    if dynamic is not None:
        plug(t, pri, dynamic)
        slots = mapped_memslots(pri)
    for vm in (pri, sec):
        reply = vm.m.qmp('migrate-set-capabilities', capabilities=[
            {'capability': 'x-colo', 'state': True}])
        if 'error' in reply:
            t.skip('x-colo refused: ' + reply['error'].get('desc', ''))
    pri.qmp('migrate-set-parameters', **{'x-checkpoint-delay': DELAY_MS})
    uri = 'unix:' + tempfile.mktemp(prefix='colo-', suffix='.sock',
                                    dir=t.tmp)
    sec.qmp('migrate-incoming', uri=uri)
    pri.qmp('migrate', uri=uri)

    if dynamic is None:
        deadline = time.monotonic() + 60
        while colo_mode(pri) != 'primary' or colo_mode(sec) != 'secondary':
            t.check(time.monotonic() < deadline,
                    f'no COLO after 60 s: primary {colo_mode(pri)}, '
                    f'secondary {colo_mode(sec)}, migration '
                    f'{pri.qmp("query-migrate")}')
            time.sleep(0.1)
        # Several checkpoints later, both are still in COLO.
        time.sleep(DELAY_MS * 10 / 1000)
        eq(t, pri.qmp('query-migrate')['status'], 'colo', 'primary migration')
        eq(t, colo_mode(pri), 'primary', 'primary COLO mode')
        eq(t, colo_mode(sec), 'secondary', 'secondary COLO mode')
        flushes = qemu_log(sec).count('colo_flush_ram_cache_begin')
        t.check(flushes >= 3, f'{flushes} checkpoints in the secondary in '
                              f'{DELAY_MS * 10} ms, want at least 3')
        t.figure(f'no device: COLO primary and secondary, {flushes} '
                 f'checkpoints in {DELAY_MS * 10} ms (delay {DELAY_MS} ms)')
        return

    # The secondary is expected to end by itself.
    sec.killed = True
    # pylint: disable=protected-access
    popen = sec.m._popen
    try:
        rc = popen.wait(timeout=60)
    except Exception:   # pylint: disable=broad-except
        rc = None
    if rc is None:
        t.check(False, 'the secondary still runs 60 s after the migration '
                       f'started: COLO mode {colo_mode(sec)}')
    log = qemu_log(sec)
    t.check(REFUSAL in log, f'the secondary exited ({rc}) without '
                            f'"{REFUSAL}":\n{log[-800:]}')
    deadline = time.monotonic() + 60
    while pri.qmp('query-migrate')['status'] not in ('failed', 'completed',
                                                     'cancelled', 'colo'):
        t.check(time.monotonic() < deadline, 'the primary\'s migration '
                f'is still {pri.qmp("query-migrate")["status"]} after 60 s')
        time.sleep(0.1)
    info = pri.qmp('query-migrate')
    eq(t, info['status'], 'failed', 'primary migration status')
    eq(t, pri.qmp('query-status')['status'], 'running', 'primary run state')
    eq(t, colo_mode(pri), 'none', 'primary COLO mode')
    eq(t, device_size(pri), 1 * GiB, 'primary device size')
    if dynamic:
        eq(t, mapped_memslots(pri), slots, 'primary mapped memslots')
    t.figure(f'{mode_name(dynamic)}: the secondary refused '
             f'("{REFUSAL}", exit {rc}), the primary\'s migration failed '
             f'({info.get("error-desc", "")}) and it runs on with 1 GiB '
             'plugged')


test('colo-control')(lambda t: colo_case(t, None))
test('colo-off')(lambda t: colo_case(t, False))
test('colo-on')(lambda t: colo_case(t, True))
