"""Real-guest tests 11: why the guest does not take the memory.

virtio-mem's counters (query-memory-devices' unstable member `stats`, HMP
`info memory-devices`) and the VIRTIO_MEM_RESIZE_STALL event, which QEMU
sends when `size` has not moved towards `requested-size` for the device's
resize-stall-timeout (here 2000 ms; default 60000) of guest run time while
the guest sent no request that brought it closer.  Three guests:

  11a  no driver (virtio_mem unloaded before requested-size is raised): one
       event after the timeout, with no requests counted; no second event;
       loading the driver again plugs the memory and clears the stall;
  11b  the guest leaves hot-plugged memory offline (memhp_default_state=
       offline): the driver plugs part of it (Linux stops at its
       offline_threshold), then the event reports the acked requests and
       the plugged bytes; onlining the memory lets the guest finish;
  11c  a normal guest plugs and unplugs 4 GiB: no event, and the counters
       add up (requests = acked, plugged and unplugged bytes 4 GiB).
"""

import re
import time

from e2elib import (GiB, test, memdev_args, vmem_args, device_info,
                    set_requested, settle, fmt)
from vmguest import DEFAULT_APPEND

TIMEOUT_MS = 2000
EVENT = 'VIRTIO_MEM_RESIZE_STALL'


def stall_vm(t, append=None):
    kw = {'append': append} if append else {}
    return t.vm(memory='1G', maxmem='17G',
                extra_args=memdev_args('mem0', '16G')
                + vmem_args('vmem0', 'mem0', True,
                            extra=f',resize-stall-timeout={TIMEOUT_MS}'),
                **kw)


def stats(vm):
    return device_info(vm, 'vmem0')['stats']


def wait_stall(t, vm, what, size, requested):
    """Wait for the stall event; check what it says; return its stats."""
    t0 = time.monotonic()
    ev = vm.wait_event(EVENT, timeout=60)
    took = time.monotonic() - t0
    data = ev['data']
    t.log(f'{what}: {EVENT} after {took:.1f}s: size {fmt(data["size"])}, '
          f'requested {fmt(data["requested-size"])}, stats {data["stats"]}')
    t.eq((data.get('id'), data['qom-path']),
         ('vmem0', '/machine/peripheral/vmem0'), f'{what}: event device')
    t.eq((data['size'], data['requested-size']), (size, requested),
         f'{what}: event sizes')
    st = data['stats']
    t.check(st['stalled'] and 'behind-since' in st,
            f'{what}: event stats not stalled: {st}')
    return st


def no_more_events(t, vm, what, seconds):
    """Let the guest run for `seconds`; no stall event may come."""
    time.sleep(seconds)
    evs = vm.drain_events(EVENT)
    t.eq(evs, [], f'{what}: {EVENT} events')


def check_hmp(t, vm, want):
    out = vm.hmp('info memory-devices')
    for line in want:
        t.check(line in out, f'HMP info memory-devices lacks {line!r}:\n'
                             f'{out}')


@test('11a-resize-stall-no-driver')
def t11a_no_driver(t):
    vm = stall_vm(t)
    t.eq(vm.qmp('qom-get', path='/machine/peripheral/vmem0',
                property='resize-stall-timeout'), TIMEOUT_MS,
         'resize-stall-timeout')
    vm.run('rmmod virtio_mem', check=True)
    vm.drain_events()
    set_requested(vm, 'vmem0', 1 * GiB)
    st = wait_stall(t, vm, 'no driver', 0, 1 * GiB)
    t.eq((st['plug-requests'], st['plug-acked'], st['plugged-bytes']),
         (0, 0, 0), 'no driver: plug counters')
    t.check(st['behind-since'] >= st.get('last-request', 0),
            f'no driver: behind-since before the last request: {st}')
    t.eq(stats(vm)['stalled'], True, 'query-memory-devices stalled')
    check_hmp(t, vm, ['plug requests: 0 (acked 0,', '(stalled)'])
    no_more_events(t, vm, 'no driver, after the event', 3 * TIMEOUT_MS / 1000)
    vm.run('insmod /lib/modules/virtio_mem.ko', check=True)
    settle(vm, 'vmem0', 1 * GiB)
    st = stats(vm)
    t.log(f'driver loaded: stats {st}')
    t.check(not st['stalled'] and 'behind-since' not in st,
            f'driver loaded: still stalled: {st}')
    t.eq(st['plugged-bytes'], 1 * GiB, 'driver loaded: plugged-bytes')
    t.check(st['plug-acked'] >= 1, f'driver loaded: no acked plug: {st}')
    no_more_events(t, vm, 'driver loaded', 2 * TIMEOUT_MS / 1000)


@test('11b-resize-stall-memory-left-offline')
def t11b_offline(t):
    vm = stall_vm(t, append=DEFAULT_APPEND.replace(
        'memhp_default_state=online_movable', 'memhp_default_state=offline'))
    _, cmdline = vm.run('cat /proc/cmdline', check=True)
    t.check('memhp_default_state=offline' in cmdline, f'cmdline {cmdline}')
    set_requested(vm, 'vmem0', 4 * GiB)
    ev_st = vm.wait_event(EVENT, timeout=120)['data']
    size = ev_st['size']
    st = ev_st['stats']
    t.log(f'memory left offline: {EVENT}: size {fmt(size)} of 4 GiB, '
          f'stats {st}')
    t.check(0 < size < 4 * GiB, f'memory left offline: the guest plugged '
                                f'{fmt(size)}')
    t.check(st['stalled'] and st['plug-acked'] >= 1
            and st['plugged-bytes'] == size
            and st['plug-requests'] == st['plug-acked'] + st['plug-nacked']
            + st['plug-busy'] + st['plug-prealloc-failed']
            + st['plug-errors'],
            f'memory left offline: event stats {st}')
    check_hmp(t, vm, ['(stalled)', f'plugged: {size},'])
    # Online what the guest added; it then plugs more, until it is done.
    dl = vm.deadline(300)
    while device_info(vm, 'vmem0')['size'] != 4 * GiB:
        vm.run('for f in /sys/devices/system/memory/memory*/state; do '
               'grep -q offline $f && echo online_movable > $f; done; true',
               check=True, timeout=120)
        if dl.expired():
            raise vm.error('the guest did not plug 4 GiB with its memory '
                           'onlined')
        time.sleep(0.5)
    st = stats(vm)
    t.log(f'memory onlined: size 4 GiB, stats {st}')
    t.check(not st['stalled'] and 'behind-since' not in st,
            f'memory onlined: still stalled: {st}')
    t.eq(st['plugged-bytes'], 4 * GiB, 'memory onlined: plugged-bytes')
    vm.drain_events()


@test('11c-resize-normal-guest-no-stall')
def t11c_normal(t):
    vm = stall_vm(t)
    base = stats(vm)
    t.eq((base['plug-requests'], base['plugged-bytes'], base['stalled']),
         (0, 0, False), 'counters at boot')
    t.check('behind-since' not in base and 'last-request' not in base,
            f'counters at boot: {base}')
    for want in (4 * GiB, 0):
        set_requested(vm, 'vmem0', want)
        settle(vm, 'vmem0', want)
    no_more_events(t, vm, 'normal guest', 2 * TIMEOUT_MS / 1000)
    st = stats(vm)
    t.log(f'normal guest after 4 GiB and back: stats {st}')
    t.eq((st['plugged-bytes'], st['unplugged-bytes']), (4 * GiB, 4 * GiB),
         'plugged and unplugged bytes')
    t.eq(st['plug-requests'], st['plug-acked'] + st['plug-nacked']
         + st['plug-busy'] + st['plug-prealloc-failed'] + st['plug-errors'],
         'plug requests = the sum of their answers')
    t.eq(st['unplug-requests'], st['unplug-acked'] + st['unplug-busy']
         + st['unplug-errors'], 'unplug requests = the sum of their answers')
    t.check(st['plug-acked'] >= 1 and st['unplug-acked']
            + st['unplug-all-requests'] >= 1, f'acked requests: {st}')
    t.check(not st['stalled'] and 'behind-since' not in st
            and st['last-size-change'] >= st['last-request'] - 1,
            f'normal guest stats: {st}')
    check_hmp(t, vm, [f'plugged: {4 * GiB}, unplugged: {4 * GiB}',
                      'last request:'])
    out = vm.hmp('info memory-devices')
    t.check(not re.search(r'stalled|differs', out),
            f'HMP shows a stall:\n{out}')
