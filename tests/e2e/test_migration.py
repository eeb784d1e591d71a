"""Real-guest test 6: live migration over a unix socket on this machine,
machine type pc-q35-7.2, between the patched QEMU (dynamic-memslots on or
off) and Debian's stock 7.2, while the guest keeps rewriting a pattern file
that lives in hot-plugged memory.

The hops form a chain, one guest boot for all of them (each hop is its own
test; a hop whose predecessor failed boots a fresh source instead):

  6a patched(on)  -> patched(on)   nothing plugged; then plug 1G, fill data
  6b patched(on)  -> patched(on)
  6c patched(on)  -> patched(off)
  6d patched(off) -> patched(on)
  6e patched(on)  -> stock 7.2
  6f stock 7.2    -> patched(on)   then plug 2G on the destination
  6g patched(on)  -> patched(on)   with a resize (2G -> 3G) in flight

After every hop, on the destination: the run state, the device's size and
requested-size (query-memory-devices), the guest's System RAM in the
device range, the mapped memslot aliases (patched, on: exactly the 1 GiB
slots covering plugged memory; off and stock: the memdev mapped directly);
then the writer is stopped and the guest's md5sum of the last generation
it wrote and of a static pattern file written before the first hop are
compared with the expected ones; then the writer starts again.
"""

import os
import time

from e2elib import (GiB, PATCHED, STOCK, test, memdev_args, vmem_args,
                    device_info, set_requested, settle, check_aliases,
                    direct_regions, container_regions, fmt,
                    guest_mount_scratch, guest_write_pattern, check_pattern,
                    guest_start_writer, guest_stop_writer, guest_writer_gen,
                    pattern_size)

MEMORY = '512M'
MAXMEM = '17G'
DEV_SIZE = '16G'
SLOT = 1 * GiB          # 16 GiB device: limit 248 -> S = 1 GiB (spec 5)
STATIC_CHUNKS = 256     # ~266 MB static pattern, written before hop 1
KEY = 'migration-chain'
MAX_BANDWIDTH = 8 * GiB  # bytes/s: don't let 7.2's 32 MiB/s default throttle
# A migration fails when it makes no progress (status, bytes sent) for
# MIGRATE_STALL seconds, or is not done after MIGRATE_LIMIT (a loaded host
# slows it down a lot: the guest writer keeps dirtying memory meanwhile).
MIGRATE_STALL = 120
MIGRATE_LIMIT = 1200
# Linux's virtio-mem driver (drivers/virtio/virtio_mem.c) retries a request
# that got VIRTIO_MEM_RESP_BUSY (QEMU refuses plugs while migrating) after
# a timer of 50 s, doubled after every retry that fails again, at most
# 300 s.  Under TCG the guest's timers follow the host clock, so the retries
# fall at predictable times; RETRY_SLACK covers the guest reacting late (to
# the resize request, to its timer) on a loaded host.
RETRY_FIRST = 50
RETRY_MAX = 300
RETRY_SLACK = 120
RETRY_ROUNDS = 3

PEERS = {
    'on': (PATCHED, True),
    'off': (PATCHED, False),
    'stock': (STOCK, None),
}


def label(kind):
    return {'on': 'patched(on)', 'off': 'patched(off)',
            'stock': 'stock 7.2'}[kind]


def need(t, kind):
    binary, _ = PEERS[kind]
    if not os.access(binary, os.X_OK):
        t.skip(f'{label(kind)} binary {binary} is missing (run '
               'scripts/fetch-stock-qemu.sh)')


def start_vm(t, kind, incoming=None, name=None):
    binary, dyn = PEERS[kind]
    return t.vm(binary=binary, memory=MEMORY, maxmem=MAXMEM,
                incoming=incoming, name=name or kind,
                extra_args=memdev_args('mem0', DEV_SIZE)
                + vmem_args('vmem0', 'mem0', dyn))


def check_layout(t, vm, kind, st, where):
    """The destination's device memory layout for what is plugged."""
    text = vm.hmp('info mtree')
    if kind == 'on':
        check_aliases(t, vm, 'mem0', st['base'], st['maxsize'], SLOT,
                      st['ranges'], text)
        t.eq(len(container_regions(vm, text)), 1,
             f'{where}: virtio-mem containers')
        t.eq(direct_regions(vm, 'mem0', text), [],
             f'{where}: mem0 mapped directly')
    else:
        t.eq(vm.mapped_memslots('mem0', text), [],
             f'{where}: memslot aliases')
        t.eq(container_regions(vm, text), [], f'{where}: virtio-mem '
                                              'container')
        regs = direct_regions(vm, 'mem0', text)
        t.eq(len(regs), 1, f'{where}: mem0 mapped directly')
        t.eq((regs[0]['start'], regs[0]['end']),
             (st['base'], st['base'] + st['maxsize'] - 1),
             f'{where}: mem0 range')
    return len(vm.mapped_memslots('mem0', text))


def fill(t, vm, plugged):
    """Plug, write the static pattern, start the writer."""
    set_requested(vm, 'vmem0', plugged)
    settle(vm, 'vmem0', plugged)
    guest_mount_scratch(vm)
    guest_write_pattern(vm, '/mnt/static', STATIC_CHUNKS, 0, 'static')
    guest_start_writer(vm)
    t.log(f'{vm.name}: {fmt(plugged)} plugged, static pattern '
          f'{fmt(pattern_size(STATIC_CHUNKS, 0, "static"))} written, '
          'writer running')


def get_source(t, kind, plugged):
    """The chain's VM if the previous hop left one of this kind, else a
    freshly booted one with `plugged` plugged and the data in place."""
    vm, state = t.take(KEY)
    if vm is not None and state['kind'] == kind and vm.is_running():
        return vm, state
    if vm is not None:
        t.kill(vm)
    t.log(f'no source from the previous hop: booting {label(kind)}')
    vm = start_vm(t, kind)
    state = {'kind': kind, 'plugged': plugged}
    if plugged:
        fill(t, vm, plugged)
    return vm, state


def next_retry(first_busy, after):
    """When Linux's driver retries a request that first got BUSY at
    `first_busy` and on every retry up to `after`: the first retry after
    `after` (times in seconds, any common origin)."""
    due, step = first_busy + RETRY_FIRST, RETRY_FIRST
    while due <= after:
        step = min(2 * step, RETRY_MAX)
        due += step
    return due


def wait_retry(t, dst, size0, t_req, t_end):
    """The resize asked for at t_req (monotonic) is not done on the
    destination after the migration that ended at t_end: the guest's
    plug requests got BUSY.  Wait for the event that finishes it, the
    guest's next retry (the device's size changes).  A retry can fail again
    in the guest (Linux then doubles the delay), so wait through
    RETRY_ROUNDS retries, each until its due time plus RETRY_SLACK."""
    due = next_retry(t_req, t_end)
    t.log(f'destination size {fmt(size0)}: the guest\'s plug requests got '
          f'BUSY during the {t_end - t_req:.0f}s of migration; its next '
          f'retry is due {due - t_end:.0f}s after the migration (Linux '
          f'retries {RETRY_FIRST}s after a BUSY, doubling, at most '
          f'{RETRY_MAX}s)')
    last = due
    for _ in range(RETRY_ROUNDS - 1):
        last = next_retry(t_req, last)
    while True:
        size = device_info(dst, 'vmem0')['size']
        now = time.monotonic()
        if size != size0:
            t.log(f'the guest retried: size {fmt(size)} '
                  f'{now - t_end:.0f}s after the migration')
            if now > due + RETRY_SLACK:
                t.note(f'the resize finished only {now - t_end:.0f}s after '
                       f'the migration, not at the first retry '
                       f'({due - t_end:.0f}s)')
            return
        if now > last + RETRY_SLACK:
            _, dmesg = dst.run('dmesg | grep -i virtio_mem | tail -n 8',
                               timeout=30)
            raise dst.error(
                f'destination size still {fmt(size0)} {now - t_end:.0f}s '
                f'after the migration: the guest\'s retries were due '
                f'{due - t_end:.0f}s to {last - t_end:.0f}s after it (plus '
                f'{RETRY_SLACK}s slack); guest virtio_mem messages: '
                f'{dmesg.strip()!r}')
        time.sleep(0.5)


def hop(t, src, state, dst_kind, resize_to=None):
    """Migrate src -> a new dst of dst_kind; verify; return the dst."""
    src_kind = state['kind']
    plugged = state['plugged']
    data = plugged > 0
    dst = start_vm(t, dst_kind, incoming='defer',
                   name=f'{dst_kind}-dst{len(t.vms)}')
    uri = dst.migrate_incoming_unix()
    if data:
        g0 = guest_writer_gen(src)
        dl = src.deadline(60)
        while guest_writer_gen(src) <= g0:       # the writer is writing
            if dl.expired():
                raise src.error(f'guest writer makes no progress in {dl}')
            time.sleep(0.2)
    if resize_to is not None:
        t_req = time.monotonic()
        set_requested(src, 'vmem0', resize_to)
        t.log(f'resize {fmt(plugged)} -> {fmt(resize_to)} requested, '
              'migrating at once')
    t0 = time.monotonic()
    src.migrate(uri, max_bandwidth=MAX_BANDWIDTH)
    info = src.wait_migration(timeout=MIGRATE_LIMIT, stall=MIGRATE_STALL)
    t_end = time.monotonic()
    took = t_end - t0
    ram = info.get('ram', {})
    src_size_at_end = device_info(src, 'vmem0')['size']
    dst.wait_runstate('running', timeout=120)
    t.eq(src.qmp('query-status')['status'], 'postmigrate',
         'source run state after migration')
    t.log(f'{label(src_kind)} -> {label(dst_kind)}: completed in '
          f'{took:.1f}s, {fmt(ram.get("transferred", 0))} transferred, '
          f'{ram.get("duplicate", 0)} zero pages, downtime '
          f'{info.get("downtime")} ms; source device size at the end '
          f'{fmt(src_size_at_end)}')
    t.kill(src)
    want = resize_to if resize_to is not None else plugged
    dinfo = device_info(dst, 'vmem0')
    t.eq(dinfo['requested-size'], want, 'destination requested-size')
    t.eq(dinfo['max-size'], 16 * GiB, 'destination max-size')
    if resize_to is None:
        t.eq(dinfo['size'], plugged, 'destination size right after '
                                     'migration')
    else:
        t.check(dinfo['size'] in range(plugged, resize_to + 1),
                f'destination size {fmt(dinfo["size"])} right after '
                f'migration, not in [{fmt(plugged)}, {fmt(resize_to)}]')
        t.log(f'destination size right after migration '
              f'{fmt(dinfo["size"])} (source had {fmt(src_size_at_end)})')
        t.eq(dinfo['size'], src_size_at_end,
             'destination size vs source size at the end of migration')
    # A plug the guest asked for while the migration ran got VIRTIO_MEM
    # BUSY; Linux's driver retries only when its retry timer fires.
    if resize_to is not None and dinfo['size'] != want:
        wait_retry(t, dst, dinfo['size'], t_req, t_end)
    st = settle(dst, 'vmem0', want)
    n = check_layout(t, dst, dst_kind, st, f'{label(dst_kind)} after '
                                          'migration')
    t.log(f'destination: size {fmt(want)}, guest RAM '
          f'{fmt(sum(e - s + 1 for s, e in st["ranges"]))}, '
          f'{n} memslot aliases mapped')
    state = dict(state, kind=dst_kind, plugged=want)
    if data:
        g = guest_stop_writer(t, dst)
        check_pattern(t, dst, '/mnt/static', STATIC_CHUNKS, 0, 'static')
        t.log(f'checksums OK: writer generation {g}, static pattern')
        guest_start_writer(dst)
    return dst, state


def chain_test(name, src_kind, dst_kind, plugged=1 * GiB, resize_to=None,
               after=None):
    @test(name)
    def fn(t):
        need(t, src_kind)
        need(t, dst_kind)
        src, state = get_source(t, src_kind, plugged)
        dst, state = hop(t, src, state, dst_kind, resize_to)
        if after:
            state = after(t, dst, state)
        t.handover(KEY, dst, state)
    return fn


@test('6a-migrate-nothing-plugged-on-to-on')
def t6a(t):
    src = start_vm(t, 'on')
    t.eq(device_info(src, 'vmem0')['size'], 0, 'source size')
    dst, state = hop(t, src, {'kind': 'on', 'plugged': 0}, 'on')
    t.eq(dst.mapped_memslots('mem0'), [], 'destination aliases')
    # The destination plugs fine afterwards: 1G, data, writer.
    fill(t, dst, 1 * GiB)
    st = settle(dst, 'vmem0', 1 * GiB)
    check_layout(t, dst, 'on', st, 'destination after plugging 1G')
    t.handover(KEY, dst, {'kind': 'on', 'plugged': 1 * GiB})


def plug_more(t, vm, state):
    """After stock -> patched(on): plugging more maps more aliases."""
    want = state['plugged'] + 1 * GiB
    set_requested(vm, 'vmem0', want)
    st = settle(vm, 'vmem0', want)
    n = check_layout(t, vm, state['kind'], st, f'after plugging to '
                                               f'{fmt(want)}')
    t.log(f'plugged to {fmt(want)} on the destination: {n} aliases')
    g = guest_stop_writer(t, vm)
    check_pattern(t, vm, '/mnt/static', STATIC_CHUNKS, 0, 'static')
    t.log(f'checksums OK after the plug: writer generation {g}')
    guest_start_writer(vm)
    return dict(state, plugged=want)


chain_test('6b-migrate-on-to-on', 'on', 'on')
chain_test('6c-migrate-on-to-off', 'on', 'off')
chain_test('6d-migrate-off-to-on', 'off', 'on')
chain_test('6e-migrate-on-to-stock', 'on', 'stock')
chain_test('6f-migrate-stock-to-on', 'stock', 'on', after=plug_more)
chain_test('6g-migrate-on-to-on-resize-in-flight', 'on', 'on',
           plugged=2 * GiB, resize_to=3 * GiB)
