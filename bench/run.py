#!/usr/bin/env python3
"""virtio-mem dynamic-memslots benchmarks (`make bench`, `make bench-quick`).

Compares in one run Debian's stock QEMU 7.2, the patched 7.2 with
dynamic-memslots=off and =on, and upstream QEMU 10.0 (bookworm-backports)
with off and on:

 1. idle cost: a paused KVM VM (-accel kvm -S) with one virtio-mem device of
    64 GiB .. 16 TiB, nothing plugged: host kernel memory (VmallocUsed over a
    no-device VM of the same binary, and /proc/vmallocinfo by caller) and the
    time from exec to QMP ready;
 2. plugged cost: a 1 TiB device with 1, 4, 16, 64 GiB plugged by the qtest
    virtio-mem driver (tests/lib/vmemqtest.py) on a paused KVM VM, against the
    physical limit (the same amount of ordinary boot RAM, measured here);
 3. QEMU-side request cost, driven by the qtest driver under -accel qtest and
    on a paused KVM VM: plug/unplug of 1 GiB, bursts of block-sized requests,
    one memory transaction with 256 aliases mapped;
 4. guest-visible latency under TCG: qom-set requested-size until the guest's
    MemTotal changes (tests/lib/vmguest.py guest);
 5. migration of a paused TCG VM with an idle device of 64 GiB .. 16 TiB,
    16 GiB plugged (into 1 TiB and into the largest device), 16 GiB more
    boot RAM, 4 GiB plugged then unplugged, an idle memfd device: stream
    bytes (counted by a unix socket reader), time, source RSS and host
    Shmem;
 5b. migration of a paused KVM VM with 512 MiB, 1.5 GiB and 16 GiB plugged
    into 4 GiB .. 1 TiB devices (the last mapped memslot partly plugged):
    stream bytes and time, stock 7.2, patched off and on, upstream 10.0 on;
 6. idle QEMU cost (issue 12): QEMU's own VmRSS and exec -> QMP ready with
    an idle device of 64 GiB .. 16 TiB (paused KVM VM), and migration time
    / the source's peak RSS with an idle 4 and 16 TiB device (against no
    device) and 16 GiB plugged (against 16 GiB more boot RAM); the report
    gives a verdict per goal;
 plus, in item 2's table, 1 GiB plugged with memslot-size=1G (patched on,
 where the binary has the property) and its plug/unplug request cost.

Writes bench/results/<date>-<host>.md, .json and PNG charts (gnuplot).
`--quick` runs only the CI check of the 1 TiB idle saving (exit 1 on failure,
last line 'N passed, N failed[, N skipped]').  `--report FILE.json`
regenerates the Markdown and charts from saved results.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position
import lib  # noqa: E402
from lib import KiB, GiB, MiB, TiB, VM, VMStartError  # noqa: E402
import vmemqtest as vq  # noqa: E402
import report  # noqa: E402

IDLE_SIZES = [64 * GiB, 256 * GiB, 1 * TiB, 4 * TiB, 16 * TiB]
PLUG_DEV = 1 * TiB
# Requests queued per notification in the batched plug / unplug figures.
BATCH = 32
PLUG_SIZES = [1 * GiB, 4 * GiB, 16 * GiB, 64 * GiB]
GUEST_SIZES = [1 * GiB, 4 * GiB, 16 * GiB]
GUEST_DEV = 1 * TiB
# Host kernel memory the benchmark leaves free (vmalloc'd memslot metadata
# is not reclaimable: a VM that would eat it all makes the host OOM-kill).
HEADROOM = 4 * GiB
META_PER_PAGE_DEFAULT = 10.05      # bytes per 4 KiB, refined by item 2

DEV = '/machine/peripheral/vmem0'
SECTIONS = ['idle', 'plugged', 'memslot-size', 'vhost', 'requests', 'guest',
            'kvm-migration', 'tcg-reset', 'tcg-hotpath',
            'migration', 'idle-cost', 'prealloc']


def log(msg=''):
    print(msg, flush=True)


def err_text(exc):
    if isinstance(exc, VMStartError):
        return exc.short()
    return f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]


# -- 1. idle cost ----------------------------------------------------------------

def measure_kvm_vm(binary, args, qtest=False, after=None, stable_timeout=60):
    """Start a paused KVM VM, wait until VmallocUsed is stable, return
    {'vmalloc': delta bytes, 'start': seconds, 'callers': {...}} (plus what
    after(vm, sample) adds: it may plug memory and take more samples)."""
    lib.wait_binary(binary)
    base = lib.settle_vmalloc()
    callers0 = lib.vmalloc_by_caller()
    res = {}
    with VM(binary, args, qtest=qtest) as vm:
        res['start'] = vm.start_seconds

        def sample():
            return lib.settle_vmalloc(timeout=stable_timeout) - base
        res['vmalloc'] = sample()
        res['callers'] = lib.caller_delta(callers0, lib.vmalloc_by_caller())
        if after:
            after(vm, sample, res)
    return res


def guard(cfg, size, per_page):
    """None, or why a VM with this device must not be started here."""
    if cfg.dynamic or not size:
        return None
    need = size / 4096 * per_page
    avail = lib.mem_available()
    if need > avail - HEADROOM:
        return (f'not started by the benchmark: the single {lib.fmt_size(size)} '
                f'memslot needs ~{lib.fmt_bytes(need)} of host kernel memory '
                f'({per_page:.2f} B per 4 KiB page), MemAvailable is '
                f'{lib.fmt_bytes(avail)} (keeping {lib.fmt_bytes(HEADROOM)} '
                f'free so the host does not OOM-kill)')
    return None


def bench_idle(cfgs, sizes, runs, res, per_page):
    out = res.setdefault('idle', {})
    # The runs of one configuration and size follow each other: on a host
    # that gives freed memory back to its hypervisor (free page reporting),
    # the first start that allocates GiBs of metadata pays for faulting the
    # memory in again and later ones reuse it; min/max show both.
    for cfg in cfgs:
        for size in [0] + sizes:
            for run in range(runs):
                slot = out.setdefault(cfg.key, {}).setdefault(str(size), [])
                why = guard(cfg, size, per_page)
                if why:
                    slot.append({'error': why, 'skipped': True})
                    log(f'  idle run {run + 1} {cfg.key:7} {lib.fmt_size(size) if size else "no device":>9}: skipped')
                    continue
                args = lib.machine_args(cfg, 'kvm', dev_size=size)
                try:
                    r = measure_kvm_vm(cfg.binary, args)
                except (VMStartError, OSError, RuntimeError) as exc:
                    r = {'error': err_text(exc)}
                slot.append(r)
                log(f'  idle run {run + 1} {cfg.key:7} '
                    f'{lib.fmt_size(size) if size else "no device":>9}: ' +
                    (f'{lib.fmt_bytes(r["vmalloc"], True)} '
                     f'start {lib.fmt_secs(r["start"])}'
                     if 'error' not in r else 'FAILED: ' + r['error']))


# -- 2. plugged cost ---------------------------------------------------------------

def bench_limit(sizes, runs, res):
    """Ordinary boot RAM: VmallocUsed of a paused VM with 1 GiB + N GiB RAM
    minus that of one with 1 GiB."""
    cfg = lib.configs()[1]          # the patched binary; no device at all
    out = res.setdefault('limit', {})
    for run in range(runs):
        for n in [0] + sizes:
            args = lib.machine_args(cfg, 'kvm', ram_gib=1 + n // GiB)
            try:
                r = measure_kvm_vm(cfg.binary, args)
            except (VMStartError, OSError, RuntimeError) as exc:
                r = {'error': err_text(exc)}
            out.setdefault(str(n), []).append(r)
            log(f'  boot RAM run {run + 1} 1 GiB + {n // GiB:3} GiB: ' +
                (lib.fmt_bytes(r['vmalloc'], True)
                 if 'error' not in r else 'FAILED: ' + r['error']))


def limit_per_page(res):
    """Host metadata bytes per 4 KiB page, from the boot RAM runs."""
    lim = res.get('limit', {})
    base = lib.summary([r.get('vmalloc') for r in lim.get('0', [])])
    best = None
    for n, rows in lim.items():
        n = int(n)
        s = lib.summary([r.get('vmalloc') for r in rows])
        if n and s and base:
            best = (s['median'] - base['median']) / (n / 4096)
    return best


def measure_plugged(cfg, after, props=''):
    """measure_kvm_vm() of a paused KVM VM with a 1 TiB device (plus
    `props`) and a qtest socket for after(); {'error': ...} if it fails."""
    args = lib.machine_args(cfg, 'kvm', dev_size=PLUG_DEV, props=props)
    try:
        return measure_kvm_vm(cfg.binary, args, qtest=True, after=after)
    except (VMStartError, OSError, RuntimeError, vq.QtestError) as exc:
        return {'error': err_text(exc)}


def bench_plugged(cfgs, sizes, runs, res):
    out = res.setdefault('plugged', {})

    def plug_steps(vm, sample, r):
        dev = vq.VirtioMem(vm.qt).init()
        vm.qmp('qom-set', path=DEV, property='requested-size',
               value=max(sizes))
        done = 0
        r['steps'] = {}
        for n in sizes:
            dev.plug(done, n - done)
            done = n
            if dev.plugged_size() != n:
                raise RuntimeError(f'plugged size {dev.plugged_size()} != {n}')
            r['steps'][str(n)] = sample()

    for run in range(runs):
        for cfg in cfgs:
            r = measure_plugged(cfg, plug_steps)
            out.setdefault(cfg.key, []).append(r)
            log(f'  plugged run {run + 1} {cfg.key:7}: ' + (
                ' '.join(f'{int(n) // GiB}G={lib.fmt_bytes(v, True)}'
                         for n, v in r['steps'].items())
                if 'error' not in r else 'FAILED: ' + r['error']))


# -- 3. request cost -----------------------------------------------------------------

def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def pam_toggle(qt, n):
    """n memory transactions: flip q35's PAM0 (0xf0000-0xfffff) between
    read-write RAM and read-only; returns seconds per write."""
    host = vq.Pci(qt, 0)
    orig = host.read(0x90, 1)
    times = []
    for i in range(n):
        val = 0x30 if i % 2 else 0x10
        times.append(timed(lambda v=val: host.write(0x90, 1, v)))
    host.write(0x90, 1, orig)
    return times


def bench_requests(cfgs, accels, reps, res):
    out = res.setdefault('requests', {})
    for accel in accels:
        for cfg in cfgs:
            r = {}
            out.setdefault(accel, {})[cfg.key] = r
            args = lib.machine_args(cfg, accel, dev_size=PLUG_DEV)
            try:
                lib.wait_binary(cfg.binary)
                with VM(cfg.binary, args, qtest=True) as vm:
                    request_suite(vm, r, reps)
            except (VMStartError, OSError, RuntimeError,
                    vq.QtestError) as exc:
                r['error'] = err_text(exc)
            log(f'  requests {accel:5} {cfg.key:7}: ' + (
                ' '.join(f'{k}={lib.fmt_secs(statistics.median(v))}'
                         for k, v in r.items() if isinstance(v, list) and v)
                if 'error' not in r else 'FAILED: ' + r['error']))


def request_suite(vm, r, reps):
    dev = vq.VirtioMem(vm.qt).init()
    bs = dev.block_size
    vm.qmp('qom-set', path=DEV, property='requested-size', value=PLUG_DEV)
    nblk = GiB // bs
    for k in ('state', 'plug_1g', 'unplug_1g', 'burst_plug', 'burst_unplug',
              'txn_0', 'txn_256'):
        r[k] = []
    # Warm up the path once.
    dev.request(vq.PLUG, dev.addr, nblk)
    dev.request(vq.UNPLUG, dev.addr, nblk)
    # Single requests are cheap: three times the repetitions.
    for _ in range(3 * reps):
        # The driver's own round trip: a STATE request changes nothing.
        r['state'].append(timed(lambda: dev.request(vq.STATE, dev.addr, nblk)))
        r['plug_1g'].append(timed(lambda: dev.request(vq.PLUG, dev.addr,
                                                      nblk)))
        r['unplug_1g'].append(timed(lambda: dev.request(vq.UNPLUG, dev.addr,
                                                        nblk)))
    # The floor differs between QEMU instances (up to 5x in one run, for
    # the same binary too): what the request itself costs is its time
    # less the STATE request just before it.
    r['plug_net'] = [p - s for p, s in zip(r['plug_1g'], r['state'])]
    r['unplug_net'] = [u - s for u, s in zip(r['unplug_1g'], r['state'])]
    # The same work without the round trip in each figure: 32 requests of
    # 1 GiB each (with on: 32 memslots mapped / unmapped), queued first,
    # then timed from the notification to the last completion; per request.
    r['plug_x32'], r['unplug_x32'] = [], []
    for _ in range(reps):
        for typ, key in ((vq.PLUG, 'plug_x32'), (vq.UNPLUG, 'unplug_x32')):
            slots = dev.submit([(typ, dev.addr + i * GiB, nblk)
                                for i in range(BATCH)], notify=False)
            t0 = time.perf_counter()
            dev.notify()
            dev.wait(BATCH)
            r[key].append((time.perf_counter() - t0) / BATCH)
            bad = [x for x in dev.responses(slots) if x[0] != vq.ACK]
            if bad:
                raise RuntimeError(f'{key}: {len(bad)} of {BATCH} requests '
                                   f'answered {bad[0]}')
    # Bursts: 1 GiB as block-sized requests, 64 queued per notification.
    plugs = [(vq.PLUG, dev.addr + i * bs, 1) for i in range(nblk)]
    unplugs = [(vq.UNPLUG, dev.addr + i * bs, 1) for i in range(nblk)]
    r['burst_n'] = nblk
    for _ in range(reps):
        r['burst_plug'].append(timed(lambda: dev.burst(plugs)))
        r['burst_unplug'].append(timed(lambda: dev.burst(unplugs)))
    # One memory transaction, with nothing plugged and with one block
    # plugged in each of 256 memslot-sized pieces of the device
    # (256 aliases mapped with dynamic-memslots=on).
    r['txn_0'] = pam_toggle(vm.qt, 20 * reps)
    step = PLUG_DEV // 256
    dev.burst([(vq.PLUG, dev.addr + i * step, 1) for i in range(256)])
    r['txn_256'] = pam_toggle(vm.qt, 20 * reps)
    dev.request(vq.UNPLUG_ALL)


# -- 4. guest-visible latency ---------------------------------------------------------

def bench_guest(cfgs, sizes, reps, res):
    sys.path.insert(0, os.path.join(lib.ROOT, 'tests', 'lib'))
    from vmguest import GuestVM, VMError  # pylint: disable=C0415
    out = res.setdefault('guest', {})
    for cfg in cfgs:
        r = {'sizes': {}}
        out[cfg.key] = r
        extra = cfg.fw_args + [
            '-cpu', 'qemu64,phys-bits=48',
            '-object', f'memory-backend-ram,id=mem0,size={GUEST_DEV // MiB}M,'
                       'reserve=off',
            '-device', f'virtio-mem-pci,id=vmem0,memdev=mem0,'
                       f'requested-size=0,{cfg.vmem_props()}']
        try:
            lib.wait_binary(cfg.binary)
            with GuestVM(binary=cfg.binary, memory='2G',
                         maxmem=f'{(2 * GiB + GUEST_DEV) // MiB}M',
                         extra_args=extra, boot_timeout=300) as vm:
                r['boot'] = vm.boot_seconds
                base = vm.meminfo('MemTotal')
                for _ in range(reps):
                    for size in sizes:
                        row = r['sizes'].setdefault(
                            str(size), {'first': [], 'full': [], 'unplug': []})
                        first, full = guest_resize(vm, size, base, base + size)
                        row['first'].append(first)
                        row['full'].append(full)
                        _, back = guest_resize(vm, 0, base + size, base)
                        row['unplug'].append(back)
        except (VMError, OSError, RuntimeError) as exc:
            r['error'] = str(exc).splitlines()[0][:300]
        log(f'  guest {cfg.key:7}: ' + (
            ' '.join(f'{int(s) // GiB}G first={lib.fmt_secs(statistics.median(v["first"]))} '
                     f'full={lib.fmt_secs(statistics.median(v["full"]))}'
                     for s, v in r['sizes'].items() if v['full'])
            + (' FAILED: ' + r['error'] if 'error' in r else '')))


def guest_resize(vm, size, start_total, want_total, timeout=180):
    """qom-set requested-size; (seconds until MemTotal first moves away from
    start_total, seconds until it equals want_total)."""
    t0 = time.monotonic()
    vm.qmp('qom-set', path=DEV, property='requested-size', value=size)
    first = None
    while True:
        cur = vm.meminfo('MemTotal')
        now = time.monotonic() - t0
        if first is None and cur != start_total:
            first = now
        if cur == want_total:
            return first, now
        if now > timeout:
            raise RuntimeError(f'guest MemTotal {cur} after {timeout}s, '
                               f'want {want_total} (requested-size {size})')


# -- 5. migration ------------------------------------------------------------------------

# (case key, device size, how): idle devices of each size on
# memory-backend-ram, plugged / plugged-then-unplugged memory (qtest driver),
# one memfd-backed idle device (source RSS and host Shmem); and for item 6,
# 16 GiB plugged into the largest device (16 TiB) beside the same VM with
# 16 GiB more boot RAM and no device ('bootram': what the plugged memory
# itself costs a migration).
def mig_cases(sizes, extra=True):
    """extra=False: only item 6's cases (no device, idle >= 4 TiB, boot RAM,
    16 GiB plugged into the largest device)."""
    idle = sizes if extra else [s for s in sizes if s >= 4 * TiB]
    big = max(sizes, default=0)
    return ([('idle-0', 0, 'idle')] +
            [(f'idle-{s}', s, 'idle') for s in idle] +
            [('bootram', 0, 'bootram')] +
            ([('plugged', PLUG_DEV, 'plug')] if extra else []) +
            ([(f'plugged-{big}', big, 'plug')] if big > PLUG_DEV else []) +
            ([('unplugged', PLUG_DEV, 'unplug'),
              ('memfd', MIG_MEMFD, 'memfd')] if extra else []))


MIG_MEMFD = 8 * GiB           # 'memfd': idle memfd-backed device
MIG_PLUG = 16 * GiB           # 'plug': plugged (and 'bootram': boot RAM)
MIG_UNPLUG = 4 * GiB          # 'unplug': plugged, then all unplugged
MIG_RAM_GIB = 2


def rss_guard(size, populate=0):
    """None, or why a QEMU with a device of `size` (and `populate` bytes the
    run may allocate) must not be started: QEMU's dirty-memory bitmaps and
    migration's bitmap cost ~4 bits per 4 KiB page of the device."""
    need = size / 4096 / 2 + populate
    avail = lib.mem_available()
    if need > avail - HEADROOM:
        return (f'not started by the benchmark: needs ~{lib.fmt_bytes(need)} '
                f'of host memory, MemAvailable is {lib.fmt_bytes(avail)} '
                f'(keeping {lib.fmt_bytes(HEADROOM)} free)')
    return None


def migrate_measure(vm, timeout):
    """Migrate the paused vm to a byte-counting unix socket; return the
    stream bytes, seconds, QEMU's RAM counters and the source's RSS / peak
    RSS / host Shmem growth.  Cancelled after `timeout` seconds (then
    'cancelled' holds the seconds and 'bytes' what was sent by then)."""
    pid = vm.pid
    r = {}
    vm.qmp('migrate-set-parameters', **{'max-bandwidth': 64 * GiB})
    with lib.StreamSink(os.path.join(vm.workdir, 'migrate.sock')) as sink:
        r['rss'] = lib.settle_rss(pid)
        shm0 = lib.meminfo('Shmem')
        hwm = lib.reset_peak_rss(pid)
        peak, shm_peak = r['rss'], shm0
        t0 = time.monotonic()
        vm.qmp('migrate', uri=sink.uri)
        while True:
            time.sleep(0.05)
            info = vm.qmp('query-migrate')
            st = info.get('status')
            peak = max(peak, lib.proc_status(pid, 'VmRSS'))
            shm_peak = max(shm_peak, lib.meminfo('Shmem'))
            if st == 'completed':
                break
            if st in ('failed', 'cancelled'):
                raise RuntimeError(f'migration {st}: '
                                   f'{info.get("error-desc", "")}')
            low = lib.mem_available() < HEADROOM // 2
            if time.monotonic() - t0 > timeout or low:
                # Too slow, or eating the shared host's memory: stop it.
                r['cancelled'] = time.monotonic() - t0
                if low:
                    r['why'] = (f'host MemAvailable fell below '
                                f'{lib.fmt_bytes(HEADROOM // 2)}')
                vm.qmp('migrate_cancel')
                break
        r['wall'] = time.monotonic() - t0
        if not sink.wait(60):
            raise RuntimeError('the migration stream was not closed')
        r['bytes'] = sink.count
    if hwm:
        peak = max(peak, lib.proc_status(pid, 'VmHWM'))
    r['peak_rss'] = peak
    r['shmem'] = lib.meminfo('Shmem') - shm0
    r['shmem_peak'] = shm_peak - shm0
    # QEMU's own total time (not quantised by our polling) when completed.
    r['seconds'] = (info['total-time'] / 1000
                    if 'cancelled' not in r and 'total-time' in info
                    else r['wall'])
    r['ram'] = {k: v for k, v in info.get('ram', {}).items()
                if isinstance(v, int)}
    return r


def mig_prepare(vm, how):
    """Plug memory through the qtest driver for the 'plug'/'unplug' cases."""
    if how not in ('plug', 'unplug'):
        return
    dev = vq.VirtioMem(vm.qt).init()
    size = MIG_PLUG if how == 'plug' else MIG_UNPLUG
    vm.qmp('qom-set', path=DEV, property='requested-size', value=size)
    dev.plug(0, size)
    if how == 'unplug':
        dev.unplug(0, size)
        vm.qmp('qom-set', path=DEV, property='requested-size', value=0)
        size = 0
    if dev.plugged_size() != size:
        raise RuntimeError(f'plugged size {dev.plugged_size()} != {size}')


def case_name(case, size):
    return (f'idle {lib.fmt_size(size)}' if case.startswith('idle-') and size
            else 'no device' if case == 'idle-0' else
            f'16 GiB plugged into {lib.fmt_size(size)}'
            if case.startswith('plugged') else
            f'{MIG_RAM_GIB}+{MIG_PLUG // GiB} GiB boot RAM, no device'
            if case == 'bootram' else case)


def fmt_mig(r):
    if 'error' in r:
        return ('skipped: ' if r.get('skipped') else 'FAILED: ') + r['error']
    return (f'{lib.fmt_bytes(r["bytes"])} in {lib.fmt_secs(r["seconds"])}'
            + (' (CANCELLED)' if 'cancelled' in r else '') +
            f', RSS {lib.fmt_bytes(r["rss"])} peak '
            f'{lib.fmt_bytes(r["peak_rss"])}, Shmem '
            f'{lib.fmt_bytes(r["shmem"], True)}')


def migrate_run(cfg, args, timeout, qtest, prepare):
    """Start cfg's QEMU with args, prepare(vm), migrate_measure() it; the
    result, or {'error': ...} if it could not be done."""
    try:
        lib.wait_binary(cfg.binary)
        with VM(cfg.binary, args, qtest=qtest) as vm:
            prepare(vm)
            r = migrate_measure(vm, timeout)
            r['start'] = vm.start_seconds
    except (VMStartError, OSError, RuntimeError, vq.QtestError) as exc:
        r = {'error': err_text(exc)}
    return r


def bench_migration(cfgs, cases, runs, res, timeout):
    """Paused TCG VM (-accel tcg -S, the same -cpu for every binary), one
    virtio-mem device, `migrate` to a byte-counting unix socket."""
    out = res.setdefault('migration', {})
    res.setdefault('meta', {})['migration_timeout'] = timeout
    for cfg in cfgs:
        for case, size, how in cases:
            for run in range(runs):
                slot = out.setdefault(cfg.key, {}).setdefault(case, [])
                why = rss_guard(size, size if how == 'memfd' else 0)
                if why:
                    slot.append({'error': why, 'skipped': True})
                    log(f'  migration run {run + 1} {cfg.key:7} '
                        f'{case_name(case, size)}: skipped: {why}')
                    continue
                args = lib.machine_args(
                    cfg, 'tcg-paused', dev_size=size,
                    ram_gib=MIG_RAM_GIB + (MIG_PLUG // GiB
                                           if how == 'bootram' else 0),
                    backend=('memory-backend-memfd' if how == 'memfd'
                             else 'memory-backend-ram'))
                r = migrate_run(cfg, args, timeout, how in ('plug', 'unplug'),
                                lambda vm, how=how: mig_prepare(vm, how))
                slot.append(r)
                log(f'  migration run {run + 1} {cfg.key:7} '
                    f'{case_name(case, size)}: {fmt_mig(r)}')


# -- 5b. migration of a paused KVM VM with partly plugged memslots -------------------------

# (device size, plugged): half a 1 GiB memslot, one and a half, and more
KVM_MIG_CASES = [(4 * GiB, 512 * MiB), (4 * GiB, 1536 * MiB),
                 (64 * GiB, 16 * GiB), (TiB, 512 * MiB), (TiB, 16 * GiB)]
KVM_MIG_CONFIGS = ('stock', 'base', 'off', 'on', 'up-on')


def kvm_mig_case(size, plugged):
    return f'{size}-{plugged}'


def bench_kvm_migration(cfgs, runs, res, timeout):
    """Paused KVM VM (-accel kvm -S), `plugged` bytes plugged from the
    start of a device of `size` by the qtest driver (KVM starts dirty
    logging with every page of a mapped memslot dirty, also the unplugged
    blocks of a partly plugged one), `migrate` to a byte-counting socket."""
    out = res.setdefault('kvm-migration', {})
    res.setdefault('meta', {})['migration_timeout'] = timeout
    for cfg in cfgs:
        if cfg.key not in KVM_MIG_CONFIGS:
            continue
        for size, plugged in KVM_MIG_CASES:
            case = kvm_mig_case(size, plugged)
            name = (f'{lib.fmt_bytes(plugged)} plugged into '
                    f'{lib.fmt_size(size)}')
            for run in range(runs):
                slot = out.setdefault(cfg.key, {}).setdefault(case, [])
                args = lib.machine_args(cfg, 'kvm', dev_size=size,
                                        requested=plugged)
                r = migrate_run(
                    cfg, args, timeout, True,
                    lambda vm, p=plugged: vq.VirtioMem(vm.qt).init().plug(0, p))
                slot.append(r)
                log(f'  kvm-migration run {run + 1} {cfg.key:7} {name}: '
                    f'{fmt_mig(r)}')


# -- 7. TCG: reset with translated code, and the hot path --------------------

# Reset: a guest plugs TCG_RESET_SIZES into a TCG_RESET_DEV device, runs
# code from every page of TCG_CODE_MIB of it (the guest's /bin/memrun -x:
# one translation per 4 KiB page), then QMP system_reset.  The device's
# reset handler is its unplug-all (virtio_mem_unplug_all(), the function a
# guest's UNPLUG_ALL request runs).  An earlier patch 23 dropped the code
# translated from the plugged memory there (1 s per GiB of code pages);
# the series now leaves translations to the code client.  The code is
# the same 1 GiB for both sizes: the host cannot populate 64 GiB, and the
# cost should follow what has code, not what is plugged.
TCG_RESET_SIZES = [16 * GiB, 64 * GiB]
TCG_RESET_DEV = 128 * GiB
TCG_CODE_MIB = 1024
TCG_BOOT = 4 * GiB          # 64 GiB hot-plugged need 1 GiB of memmap
# Hot path: boot, plug HOT_PLUG, fill HOT_MIB in it and checksum it
# HOT_PASSES times (/bin/memrun -s); guest-clock seconds of each.
HOT_PLUG = 2 * GiB
HOT_MIB = 1024
HOT_PASSES = 4
HOT_DEV = 1 * TiB
TCG_CONFIGS = ('stock', 'base', 'off', 'on', 'up-on', 'extra-off',
               'extra-on')
_MEMRUN_RE = re.compile(r'^memrun: OK (\w+) pages (\d+) (.*)$', re.M)


def tcg_guest(cfg, dev_size, boot, append_extra=''):
    """A test guest under TCG with boot RAM on NUMA node 0 and the device
    (nothing plugged) as node 1; append_extra goes on the kernel's command
    line."""
    sys.path.insert(0, os.path.join(lib.ROOT, 'tests', 'lib'))
    from vmguest import GuestVM, DEFAULT_APPEND  # pylint: disable=C0415
    extra = cfg.fw_args + [
        '-cpu', 'qemu64,phys-bits=48',
        '-object', f'memory-backend-ram,id=ram0,size={boot // MiB}M',
        '-numa', 'node,nodeid=0,memdev=ram0', '-numa', 'node,nodeid=1',
        '-object', f'memory-backend-ram,id=mem0,size={dev_size // MiB}M,'
                   'reserve=off',
        '-device', f'virtio-mem-pci,id=vmem0,memdev=mem0,node=1,'
                   f'requested-size=0,{cfg.vmem_props()}']
    return GuestVM(binary=cfg.binary, memory=f'{boot // MiB}M',
                   maxmem=f'{(boot + dev_size) // MiB}M', extra_args=extra,
                   append=f'{DEFAULT_APPEND} {append_extra}'.strip(),
                   boot_timeout=300)


def memrun(vm, args, timeout=1800):
    """Run /bin/memrun in the guest; its figures as a dict."""
    rc, out = vm.run(f'memrun -n 1 {args}', timeout=timeout)
    m = _MEMRUN_RE.search(out)
    if rc or not m:
        raise RuntimeError(f'memrun {args}: exit {rc}: {out.strip()[-300:]}')
    words = m.group(3).split()
    figs = dict(zip(words[::2], words[1::2]))
    figs['pages'] = int(m.group(2))
    return figs


def guest_plug(vm, size):
    """requested-size = size; seconds until the guest plugged it all."""
    t0 = time.monotonic()
    vm.qmp('qom-set', path=DEV, property='requested-size', value=size)
    while vm.qmp('qom-get', path=DEV, property='size') != size:
        if time.monotonic() - t0 > 600:
            raise RuntimeError(f'guest plugged '
                               f'{vm.qmp("qom-get", path=DEV, property="size")}'
                               f' of {size} after 600 s')
        time.sleep(0.05)
    return time.monotonic() - t0


def bench_tcg_reset(cfgs, runs, res):
    out = res.setdefault('tcg-reset', {})
    for run in range(runs):
        for size in TCG_RESET_SIZES:
            for cfg in cfgs:
                if cfg.key not in TCG_CONFIGS:
                    continue
                slot = out.setdefault(cfg.key, {}).setdefault(str(size), [])
                r = {}
                try:
                    lib.wait_binary(cfg.binary)
                    with tcg_guest(cfg, TCG_RESET_DEV, TCG_BOOT) as vm:
                        r['plug'] = guest_plug(vm, size)
                        figs = memrun(vm, f'-m {TCG_CODE_MIB} -x')
                        r['code_pages'] = figs['pages']
                        r['code'] = float(figs['seconds'])
                        t0 = time.monotonic()
                        vm.qmp('system_reset')
                        vm.wait_event('RESET', timeout=600)
                        r['reset'] = time.monotonic() - t0
                        r['size_after'] = vm.qmp('qom-get', path=DEV,
                                                 property='size')
                        if r['size_after']:
                            r['error'] = (f'size {r["size_after"]} after '
                                          'the reset, want 0')
                except Exception as exc:    # pylint: disable=broad-except
                    r['error'] = err_text(exc)
                slot.append(r)
                log(f'  tcg-reset run {run + 1} {cfg.key:7} '
                    f'{size // GiB} GiB plugged: ' +
                    (f'FAILED: {r["error"]}' if 'error' in r else
                     f'reset {lib.fmt_secs(r["reset"])} (code from '
                     f'{r["code_pages"]} pages in {r["code"]:.1f} s, '
                     f'plug {r["plug"]:.1f} s)'))


def bench_tcg_hotpath(cfgs, runs, res):
    out = res.setdefault('tcg-hotpath', {})
    for run in range(runs):
        for cfg in cfgs:
            if cfg.key not in TCG_CONFIGS:
                continue
            r = {}
            try:
                lib.wait_binary(cfg.binary)
                with tcg_guest(cfg, HOT_DEV, 2 * GiB) as vm:
                    r['boot'] = vm.boot_seconds
                    r['plug'] = guest_plug(vm, HOT_PLUG)
                    t0 = time.monotonic()
                    figs = memrun(vm, f'-m {HOT_MIB} -s {HOT_PASSES}')
                    r['wall'] = time.monotonic() - t0
                    r['fill'] = float(figs['fill'])
                    r['sum'] = float(figs['seconds'])
                    r['checksum'] = figs['checksum']
            except Exception as exc:    # pylint: disable=broad-except
                r['error'] = err_text(exc)
            out.setdefault(cfg.key, []).append(r)
            log(f'  tcg-hotpath run {run + 1} {cfg.key:7}: ' +
                (f'FAILED: {r["error"]}' if 'error' in r else
                 f'boot {r["boot"]:.2f} s, fill {r["fill"]:.2f} s, '
                 f'checksum x{HOT_PASSES} {r["sum"]:.2f} s '
                 f'({r["checksum"]})'))


# -- 6. idle QEMU cost ---------------------------------------------------------------------

def bench_idle_cost(cfgs, sizes, runs, res, per_page, accel):
    """QEMU's own VmRSS and exec -> QMP ready of a paused VM with an idle
    device, and of the same VM without it."""
    out = res.setdefault('idle_cost', {})
    res.setdefault('meta', {})['idle_cost_accel'] = accel
    for cfg in cfgs:
        for size in [0] + sizes:
            for run in range(runs):
                slot = out.setdefault(cfg.key, {}).setdefault(str(size), [])
                why = rss_guard(size) or (guard(cfg, size, per_page)
                                          if accel == 'kvm' else None)
                name = lib.fmt_size(size) if size else 'no device'
                if why:
                    slot.append({'error': why, 'skipped': True})
                    log(f'  idle-cost run {run + 1} {cfg.key:7} {name:>9}: '
                        'skipped')
                    continue
                try:
                    lib.wait_binary(cfg.binary)
                    with VM(cfg.binary, lib.machine_args(
                            cfg, accel, dev_size=size)) as vm:
                        r = {'start': vm.start_seconds,
                             'rss': lib.settle_rss(vm.pid)}
                except (VMStartError, OSError, RuntimeError) as exc:
                    r = {'error': err_text(exc)}
                slot.append(r)
                log(f'  idle-cost run {run + 1} {cfg.key:7} {name:>9}: ' +
                    (f'VmRSS {lib.fmt_bytes(r["rss"])} start '
                     f'{lib.fmt_secs(r["start"])}'
                     if 'error' not in r else 'FAILED: ' + r['error']))


# -- 7. memslot-size (plugged row) ---------------------------------------------------------

MEMSLOT_SIZE = 1 * GiB


def bench_memslot(cfg, runs, reps, res):
    """1 GiB plugged into a 1 TiB device on a paused KVM VM, with
    memslot-size=1G and with the automatic size (patched on only): host
    kernel memory, then the 1 GiB plug/unplug request (maps/unmaps one
    memslot) timed `reps` times."""
    out = res.setdefault('memslot', {'size': MEMSLOT_SIZE, 'runs': {}})
    lib.wait_binary(cfg.binary)
    if 'memslot-size' not in lib.device_help(cfg.binary):
        out['error'] = ('not supported by this binary (`-device '
                        'virtio-mem-pci,help` lists no memslot-size)')
        log(f'  memslot-size: {out["error"]}')
        return

    def plug_steps(vm, sample, r):
        dev = vq.VirtioMem(vm.qt).init()
        vm.qmp('qom-set', path=DEV, property='requested-size', value=GiB)
        dev.plug(0, GiB)
        r['plugged'] = sample()
        nblk = GiB // dev.block_size
        dev.request(vq.UNPLUG, dev.addr, nblk)
        r['plug_1g'], r['unplug_1g'] = [], []
        for _ in range(reps):
            r['plug_1g'].append(timed(lambda: dev.request(vq.PLUG, dev.addr,
                                                          nblk)))
            r['unplug_1g'].append(timed(lambda: dev.request(
                vq.UNPLUG, dev.addr, nblk)))

    for run in range(runs):
        for key, props in (('auto', ''),
                           ('1G', f'memslot-size={MEMSLOT_SIZE // MiB}M')):
            r = measure_plugged(cfg, plug_steps, props)
            out['runs'].setdefault(key, []).append(r)
            log(f'  memslot-size run {run + 1} {key:4}: ' + (
                f'1 GiB plugged {lib.fmt_bytes(r["plugged"], True)}, plug '
                f'{lib.fmt_secs(statistics.median(r["plug_1g"]))} unplug '
                f'{lib.fmt_secs(statistics.median(r["unplug_1g"]))}'
                if 'error' not in r else 'FAILED: ' + r['error']))


# -- quick (CI) check ---------------------------------------------------------------------

# -- 8. vhost-user backends ----------------------------------------------------

VHOST_SIZES = [1 * GiB, 16 * GiB]
VHOST_CFGS = ('stock', 'on', 'up-on')


def qsd_binaries():
    """The vhost-user-blk backends compared: ours (the series'
    libvhost-user) and Debian's stock qemu-storage-daemon."""
    return {'own': os.path.join(lib.ROOT, 'build', 'bin',
                                'qemu-storage-daemon'),
            'stock': os.path.join(lib.STOCK_DIR, 'usr', 'bin',
                                  'qemu-storage-daemon')}


class Qsd:
    """qemu-storage-daemon exporting a small file as vhost-user-blk."""

    def __init__(self, binary, workdir):
        self.sock = os.path.join(workdir, 'vub.sock')
        img = os.path.join(workdir, 'vub.img')
        with open(img, 'wb') as f:
            f.truncate(64 * MiB)
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [binary, '--blockdev', f'driver=file,node-name=f0,filename={img}',
             '--export', 'type=vhost-user-blk,id=e0,node-name=f0,'
             f'addr.type=unix,addr.path={self.sock}'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'{binary} did not create {self.sock}')
            time.sleep(0.05)

    def status(self, field):
        with open(f'/proc/{self.proc.pid}/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
        return None

    def memfd_maps(self):
        n = 0
        with open(f'/proc/{self.proc.pid}/maps') as f:
            for line in f:
                n += '/memfd:' in line
        return n

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def halt_bios(workdir):
    """A 64 KiB "BIOS" whose reset vector halts the vCPU (cli; hlt; jmp
    back): the VM can run, which vhost devices need to start their backend,
    without firmware touching the devices the qtest driver set up."""
    path = os.path.join(workdir, 'halt.bin')
    with open(path, 'wb') as f:
        f.write(bytes(64 * KiB - 16) + bytes([0xfa, 0xf4, 0xeb, 0xfd])
                + bytes(12))
    return path


def vhost_args(cfg, sock, dev_size, props, bios):
    """A KVM VM (started paused, run once the qtest driver set up the
    vhost-user-blk function) with a halting BIOS, boot RAM and the device as
    shared memfds (vhost-user needs them), the vhost-user-blk device first
    (upstream refuses a 32-slot backend after a device with several
    memslots)."""
    vub = (['-chardev', f'socket,id=vub0,path={sock}',
            '-device', 'vhost-user-blk-pci,id=vub0,chardev=vub0,num-queues=1']
           if sock else [])
    return vub + ['-bios', bios] + lib.machine_args(
        cfg, 'kvm', dev_size=dev_size,
        backend='memory-backend-memfd,share=on', props=props,
        extra=['-machine', 'memory-backend=ram0', '-object',
               'memory-backend-memfd,id=ram0,size=1G,share=on'])


def vhost_case(cfg, backend, dev_size, props, after):
    """measure_kvm_vm() with the backend (None, 'own', 'stock') attached."""
    workdir = tempfile.mkdtemp(prefix='bench-vhost-')
    q = None
    try:
        if backend:
            q = Qsd(qsd_binaries()[backend], workdir)

        def wrapped(vm, sample, r):
            if q:
                vq.start_virtio_blk(vm.qt)
            vm.qmp('cont')      # the vhost device starts with the VM
            info = [d['data'] for d in vm.qmp('query-memory-devices')]
            r['memslots'] = info[0].get('memslots')      # None: upstream
            after(vm, sample, r, q)
        return measure_kvm_vm(cfg.binary,
                              vhost_args(cfg, q.sock if q else None, dev_size,
                                         props, halt_bios(workdir)),
                              qtest=True, after=wrapped)
    except (VMStartError, OSError, RuntimeError, vq.QtestError) as exc:
        return {'error': err_text(exc)}
    finally:
        if q:
            q.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def bench_vhost(cfgs, runs, res):
    out = res.setdefault('vhost', {})
    by_key = {c.key: c for c in cfgs}
    bins = qsd_binaries()
    out['backends'] = {k: {'binary': v, 'slots': None} for k, v in bins.items()}

    def plug_steps(vm, sample, r, q):
        dev = vq.VirtioMem(vm.qt).init()
        vm.qmp('qom-set', path=DEV, property='requested-size',
               value=max(VHOST_SIZES))
        done, r['steps'] = 0, {'0': sample()}
        for n in VHOST_SIZES:
            dev.plug(done, n - done)
            done = n
            r['steps'][str(n)] = sample()
        if q:
            r['backend_rss'] = q.status('VmRSS')
            r['backend_vsz'] = q.status('VmSize')

    def one_per_memslot(vm, sample, r, q):
        """One block in each memslot: every memslot mapped, as many
        regions in the backend."""
        dev = vq.VirtioMem(vm.qt).init()
        # upstream 10.0 does not report it: 256 memslots of 4 GiB here
        slots = r['memslots'] or 256
        step = dev.region_size // slots
        vm.qmp('qom-set', path=DEV, property='requested-size',
               value=dev.region_size)
        r['before'] = {'rss': q.status('VmRSS'), 'vsz': q.status('VmSize'),
                       'maps': q.memfd_maps()}
        dev.burst([(vq.PLUG, dev.addr + i * step, 1) for i in range(slots)])
        time.sleep(0.5)
        r['after'] = {'rss': q.status('VmRSS'), 'vsz': q.status('VmSize'),
                      'maps': q.memfd_maps()}
        r['vmalloc_all'] = sample()

    cases = []
    for key in VHOST_CFGS:
        if key in by_key:
            for backend in (None, 'own', 'stock'):
                cases.append((key, backend, PLUG_DEV, ''))
    if 'on' in by_key:
        for backend in (None, 'own', 'stock'):
            cases.append(('on', backend, PLUG_DEV, 'memslot-size=1G'))
            cases.append(('on', backend, 256 * GiB, 'memslot-size=1G'))
    for run in range(runs):
        for key, backend, dev_size, props in cases:
            name = (f'{key}/{backend or "none"}/{dev_size // GiB}G'
                    + (f'/{props}' if props else ''))
            r = vhost_case(by_key[key], backend, dev_size, props, plug_steps)
            out.setdefault('plugged', {}).setdefault(name, []).append(r)
            log(f'  vhost run {run + 1} {name:34}: ' + (
                f'memslots {r.get("memslots")} ' + ' '.join(
                    f'{int(n) // GiB}G={lib.fmt_bytes(v, True)}'
                    for n, v in r.get('steps', {}).items())
                + (f' backend RSS {lib.fmt_bytes(r["backend_rss"])} VSZ '
                   f'{lib.fmt_bytes(r["backend_vsz"])}'
                   if r.get('backend_rss') else '')
                if 'error' not in r else 'FAILED: ' + r['error']))
        for key in ('on', 'up-on'):
            if key not in by_key:
                continue
            for backend in ('own', 'stock'):
                name = f'{key}/{backend}/1024G/one-per-memslot'
                r = vhost_case(by_key[key], backend, PLUG_DEV, '',
                               one_per_memslot)
                out.setdefault('regions', {}).setdefault(name, []).append(r)
                log(f'  vhost run {run + 1} {name:34}: ' + (
                    f'{r["memslots"]} memslots mapped: backend memfd '
                    f'mappings {r["before"]["maps"]} -> {r["after"]["maps"]}, '
                    f'RSS {lib.fmt_bytes(r["before"]["rss"])} -> '
                    f'{lib.fmt_bytes(r["after"]["rss"])}, VSZ '
                    f'{lib.fmt_bytes(r["before"]["vsz"])} -> '
                    f'{lib.fmt_bytes(r["after"]["vsz"])}'
                    if 'error' not in r else 'FAILED: ' + r['error']))


# -- 9. preallocation with threads -------------------------------------------

PREALLOC_DEV = 16 * GiB
PREALLOC_SIZES = (4 * GiB, 16 * GiB)
PREALLOC_THREADS = (1, 2)
PREALLOC_CFGS = ('on', 'stock', 'up-on')
PREALLOC_MACHINE = 'pc-q35-7.2'
HUGE = 2 * MiB
# The device's 8192 huge pages and some for the rest of the VM's needs.
HUGE_WANT = PREALLOC_DEV // HUGE + 64
# A pause after each VM: its memory is freed, each case finds the same
# state (bench/membw.c populates as fast right after a free as after 8 s).
PREALLOC_SETTLE = 1.0
# At most this much memory of ours in use at once (the machine has 24 GiB).
PREALLOC_CAP = 18 * GiB
FAIL_TMPFS, FAIL_DEV, FAIL_PLUG, FAIL_OK = 1 * GiB, 4 * GiB, 2 * GiB, 512 * MiB


def membw_exe():
    """build/bench/membw, (re)built from bench/membw.c when older."""
    exe = os.path.join(lib.ROOT, 'build', 'bench', 'membw')
    src = os.path.join(HERE, 'membw.c')
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(exe), exist_ok=True)
        subprocess.run(['gcc', '-O2', '-Wall', '-pthread', '-o', exe, src],
                       check=True)
    return exe


def membw(size, threads, hugetlb=False, once=False):
    """bench/membw.c on a fresh memfd of `size`: {'populate', 'memset',
    'repopulate': GiB/s, 'method': 'madvise'|'touch'} (once: populate
    only)."""
    b0, t0 = cpu_busy()
    c0 = os.times()
    out = subprocess.run([membw_exe(), str(size // MiB), str(threads)] +
                         (['hugetlb'] if hugetlb else []) +
                         (['once'] if once else []), check=True,
                         capture_output=True, text=True, timeout=600).stdout
    b1, t1 = cpu_busy()
    c1 = os.times()
    span = (t1 - t0) / (os.cpu_count() or 1) or 1
    hz = os.sysconf('SC_CLK_TCK')
    own = ((c1.children_user + c1.children_system) -
           (c0.children_user + c0.children_system)) * hz
    r = {'cores_others': max(0.0, (b1 - b0 - own) / span)}
    for ln in out.splitlines():
        k, v = ln.split()
        r[k] = v if k == 'method' else float(v)
    return r


def hugepages(n=None):
    """Set nr_hugepages (2 MiB pages) to n; return (nr_hugepages,
    HugePages_Free)."""
    path = '/proc/sys/vm/nr_hugepages'
    if n is not None:
        with open(path, 'w') as f:
            f.write(str(n))
    with open(path) as f:
        total = int(f.read())
    return total, huge_free()


def huge_free():
    """HugePages_Free (a count: /proc/meminfo gives it without 'kB')."""
    with open('/proc/meminfo') as f:
        for ln in f:
            if ln.startswith('HugePages_Free:'):
                return int(ln.split()[1])
    return None


def newest_q35(binary):
    """The machine type `q35` stands for in this binary."""
    out = subprocess.run([binary, '-machine', 'help'], capture_output=True,
                         text=True, timeout=30, check=False).stdout
    m = re.search(r'^q35\s.*\(alias of (\S+)\)', out, re.M)
    return m.group(1) if m else 'q35'


def prealloc_args(cfg, backend, props='', machine=PREALLOC_MACHINE,
                  dev_size=PREALLOC_DEV):
    """A paused TCG VM, 1 GiB of boot RAM, one virtio-mem-pci (cfg's
    properties plus `props`) on the object `backend` (id mem0)."""
    return (['-machine', machine, '-nodefaults'] + cfg.fw_args +
            ['-accel', 'tcg', '-S', '-cpu', 'qemu64,phys-bits=48',
             '-m', f'1G,maxmem={(GiB + dev_size) // MiB}M',
             '-object', f'{backend},id=mem0,size={dev_size // MiB}M',
             '-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,requested-size=0,'
             f'{cfg.vmem_props()}' + (f',{props}' if props else '')])


def vmem_size(vm):
    """The device's `size` as query-memory-devices reports it."""
    for d in vm.qmp('query-memory-devices'):
        if d.get('type') == 'virtio-mem' and d['data'].get('id') == 'vmem0':
            return d['data']['size']
    return None


class ThreadWatch:
    """The most threads a process had at once while watched (polled every
    2 ms): preallocation threads live only during the request."""

    def __init__(self, pid):
        self.pid, self.most = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def count(self):
        try:
            return len(os.listdir(f'/proc/{self.pid}/task'))
        except OSError:
            return 0

    def _poll(self):
        while not self._stop.is_set():
            self.most = max(self.most, self.count())
            time.sleep(0.002)

    def __enter__(self):
        self.before = self.count()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        return False


def timed_request(vm, dev, typ, addr, nb, timeout=600, r=None):
    """One request, its answer awaited up to `timeout` (a 16 GiB
    preallocation takes a minute or more here) -> (answer name, seconds).
    With r: r['threads_extra'] = the most threads QEMU had during the
    request over those it had before."""
    assert 0 < nb <= 0xffff, nb          # the request's 16-bit block count
    vm.qt._sock.settimeout(timeout)      # pylint: disable=protected-access
    with ThreadWatch(vm.pid) as tw:
        t0 = time.monotonic()
        slots = dev.submit([(typ, addr, nb)])
        dev.wait(1, timeout)
        secs = time.monotonic() - t0
    if r is not None:
        r['threads_extra'] = tw.most - tw.before
    resp = dev.responses(slots)[0][0]
    return vq.RESP_NAMES.get(resp, str(resp)), secs


def cpu_busy():
    """(busy, total) jiffies of all CPUs (/proc/stat)."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def proc_cpu(pid):
    """utime + stime of pid, in jiffies."""
    with open(f'/proc/{pid}/stat') as f:
        v = f.read().rsplit(')', 1)[1].split()
    return int(v[11]) + int(v[12])


class CpuWatch:
    """Cores busy in total and by one QEMU over a stretch of time: what
    other processes took from the 2 cores while we measured."""

    def __init__(self, pid):
        self.pid = pid
        self.b0, self.t0 = cpu_busy()
        self.q0 = proc_cpu(pid)

    def done(self, r):
        b1, t1 = cpu_busy()
        q1 = proc_cpu(self.pid)
        cores = os.cpu_count() or 1
        span = (t1 - self.t0) / cores or 1
        r['cores_busy'] = (b1 - self.b0) / span
        r['cores_qemu'] = (q1 - self.q0) / span
        r['cores_others'] = max(0.0, r['cores_busy'] - r['cores_qemu'])


def room_for(need):
    """None if `need` more bytes fit (our cap, and MemAvailable keeps
    2 GiB), else why the case is not run."""
    avail = lib.mem_available()
    if need > PREALLOC_CAP or avail < need + 2 * GiB:
        return (f'not run: needs {lib.fmt_bytes(need)}, MemAvailable '
                f'{lib.fmt_bytes(avail)} (keeps 2 GiB; cap '
                f'{lib.fmt_bytes(PREALLOC_CAP)})')
    return None


def prealloc_plug(cfg, kind, threads, size):
    """One paused TCG VM: plug `size` with prealloc=on in one request and
    check that it really was preallocated."""
    backend = ('memory-backend-memfd,share=on,reserve=off' +
               (',hugetlb=on,hugetlbsize=2M' if kind == 'hugetlb' else '') +
               f',prealloc-threads={threads}')
    r = {}
    why = room_for(size) if kind == 'memfd' else None
    if why:
        return {'error': why}
    try:
        with VM(cfg.binary, prealloc_args(cfg, backend, 'prealloc=on'),
                qtest=True) as vm:
            dev = vq.VirtioMem(vm.qt).init()
            r['block_size'] = dev.block_size
            vm.qmp('qom-set', path=DEV, property='requested-size', value=size)
            if kind == 'hugetlb':
                before = huge_free()
            else:
                before = lib.proc_status(vm.pid, 'RssShmem')
            watch = CpuWatch(vm.pid)
            r['resp'], r['seconds'] = timed_request(
                vm, dev, vq.PLUG, dev.addr, size // dev.block_size, r=r)
            watch.done(r)
            r['size'] = vmem_size(vm)
            if kind == 'hugetlb':
                r['grown'] = (before - huge_free()) * HUGE
            else:
                r['grown'] = lib.proc_status(vm.pid, 'RssShmem') - before
            r['ok'] = (r['resp'] == 'ACK' and r['size'] == size and
                       r['grown'] >= size)
            if not r['ok']:
                r['error'] = (f'{r["resp"]}, size {lib.fmt_bytes(r["size"])}'
                              f', backend grew {lib.fmt_bytes(r["grown"])}')
    except (VMStartError, OSError, RuntimeError, vq.QtestError) as exc:
        r['error'] = err_text(exc)
    time.sleep(PREALLOC_SETTLE if kind == 'memfd' else 0.5)
    return r


def tmpfs_used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def prealloc_failure(cfg):
    """A preallocation that fails (a 4 GiB file on a 1 GiB tmpfs, 2 GiB
    plugged at 2 threads) must be answered BUSY and leave nothing behind;
    then 512 MiB plug fine."""
    mnt = tempfile.mkdtemp(prefix='bench-tmpfs-')
    r = {}
    mounted = False
    try:
        subprocess.run(['mount', '-t', 'tmpfs', '-o',
                        f'size={FAIL_TMPFS // MiB}M', 'bench-prealloc', mnt],
                       check=True, capture_output=True, text=True)
        mounted = True
        backend = (f'memory-backend-file,mem-path={mnt}/mem0,share=on,'
                   'prealloc-threads=2')
        with VM(cfg.binary, prealloc_args(cfg, backend, 'prealloc=on',
                                          dev_size=FAIL_DEV),
                qtest=True) as vm:
            dev = vq.VirtioMem(vm.qt).init()
            vm.qmp('qom-set', path=DEV, property='requested-size',
                   value=FAIL_DEV)
            r['used_before'] = tmpfs_used(mnt)
            r['resp'], r['seconds'] = timed_request(
                vm, dev, vq.PLUG, dev.addr, FAIL_PLUG // dev.block_size)
            r['size'] = vmem_size(vm)
            r['used'] = tmpfs_used(mnt)
            r['resp_ok'], _ = timed_request(
                vm, dev, vq.PLUG, dev.addr, FAIL_OK // dev.block_size)
            r['size_ok'] = vmem_size(vm)
            r['used_ok'] = tmpfs_used(mnt)
        r['pass'] = (r['resp'] == 'BUSY' and r['size'] == 0 and
                     r['used'] <= 4 * MiB and r['resp_ok'] == 'ACK' and
                     r['size_ok'] == FAIL_OK and r['used_ok'] >= FAIL_OK)
    except (VMStartError, OSError, RuntimeError, vq.QtestError,
            subprocess.CalledProcessError) as exc:
        r['error'] = err_text(exc) + (
            f' ({exc.stderr.strip()})' if getattr(exc, 'stderr', None) else '')
        r['pass'] = False
    finally:
        if mounted:
            subprocess.run(['umount', mnt], check=False)
        shutil.rmtree(mnt, ignore_errors=True)
    return r


def prealloc_incoming(cfg, machine, props, threads, kind, size=16 * GiB):
    """Migrate `size` plugged (never written: all zero pages) from a paused
    source on private anonymous memory (a zero page read there maps the
    shared zero page: the source stays small) into a destination with
    prealloc=on and prealloc-threads=`threads` on `kind` memory: 'anon'
    (memory-backend-ram: a zero page received is read, not written, so only
    a preallocation populates it) or 'memfd' (shared: reading an absent page
    allocates it).  What the destination holds afterwards: RssAnon /
    RssShmem growth."""
    why = room_for(size + 512 * MiB)
    if why:
        return {'error': why}
    src_be = 'memory-backend-ram,reserve=off'
    dst_be = ('memory-backend-ram,reserve=off' if kind == 'anon' else
              'memory-backend-memfd,share=on,reserve=off') + \
        f',prealloc-threads={threads}'
    field = 'RssAnon' if kind == 'anon' else 'RssShmem'
    r = {}
    tmp = tempfile.mkdtemp(prefix='bench-mig-')
    uri = 'unix:' + os.path.join(tmp, 'mig.sock')
    try:
        with VM(cfg.binary, prealloc_args(cfg, src_be, props, machine),
                qtest=True) as src, \
                VM(cfg.binary, prealloc_args(
                    cfg, dst_be, 'prealloc=on' + (f',{props}' if props else ''),
                    machine) + ['-incoming', 'defer']) as dst:
            dev = vq.VirtioMem(src.qt).init()
            src.qmp('qom-set', path=DEV, property='requested-size',
                    value=size)
            dev.plug(0, size)
            for prop in ('x-early-migration', 'x-prealloc-incoming'):
                try:
                    r[prop] = dst.qmp('qom-get', path=DEV + '/virtio-backend',
                                      property=prop)
                except RuntimeError:
                    pass            # the binary has no such property
            rss0 = lib.proc_status(dst.pid, field)
            src_rss0 = lib.proc_status(src.pid, 'VmRSS')
            dst.qmp('migrate-incoming', uri=uri)
            src.qmp('migrate-set-parameters', **{'max-bandwidth': 64 * GiB})
            t0 = time.monotonic()
            watch = CpuWatch(dst.pid)
            peak = 0
            with ThreadWatch(dst.pid) as tw:
                src.qmp('migrate', uri=uri)
                while True:
                    st = src.qmp('query-migrate')
                    peak = max(peak, lib.proc_status(dst.pid, field) - rss0)
                    if st['status'] in ('completed', 'failed', 'cancelled'):
                        break
                    if time.monotonic() - t0 > 400:
                        src.qmp('migrate_cancel')
                    time.sleep(0.1)
            r['dst_threads_extra'] = tw.most - tw.before
            r['wall'] = time.monotonic() - t0
            r['status'] = st['status']
            r['total_time'] = st.get('total-time', 0) / 1000
            r['transferred'] = st.get('ram', {}).get('transferred')
            r['zero_pages'] = st.get('ram', {}).get('duplicate')
            while dst.qmp('query-status')['status'] == 'inmigrate' and \
                    time.monotonic() - t0 < 460:
                time.sleep(0.1)
            watch.done(r)
            r['dst_status'] = dst.qmp('query-status')['status']
            r['dst_grown'] = lib.proc_status(dst.pid, field) - rss0
            r['dst_peak'] = max(peak, r['dst_grown'])
            r['dst_size'] = vmem_size(dst)
            r['src_grown'] = lib.proc_status(src.pid, 'VmRSS') - src_rss0
            if r['status'] != 'completed' or r['dst_size'] != size:
                r['error'] = (f'migration {r["status"]}, destination size '
                              f'{lib.fmt_bytes(r["dst_size"])}')
    except Exception as exc:   # pylint: disable=broad-except
        # e.g. the destination killed by the host's OOM killer
        r['error'] = err_text(exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    time.sleep(PREALLOC_SETTLE)
    return r


def bench_prealloc(cfgs, runs, res):
    """Section 9: see bench/README.md."""
    out = res.setdefault('prealloc', {})
    by_key = {c.key: c for c in cfgs}
    keys = [k for k in PREALLOC_CFGS if k in by_key]
    t_start = time.monotonic()
    bw = out.setdefault('membw', {})

    def plug_cases(kind, runs_small, runs_big, big_ok=lambda key, t: True):
        for run in range(max(runs_small, runs_big)):
            for size in PREALLOC_SIZES:
                if run >= (runs_big if size > 4 * GiB else runs_small):
                    continue
                # The configurations and thread counts take turns, in a
                # different order each run.
                order = [(k, t) for t in PREALLOC_THREADS for k in keys]
                shift = run % len(order)
                order = order[shift:] + order[:shift]
                if run % 2:
                    order.reverse()
                for key, threads in order:
                    if size > 4 * GiB and not big_ok(key, threads):
                        continue
                    name = f'{key}/{kind}/{size // GiB}G/{threads}'
                    r = prealloc_plug(by_key[key], kind, threads, size)
                    out.setdefault('plug', {}).setdefault(name, []).append(r)
                    log(f'  plug run {run + 1} {name:20}: ' + (
                        f'{r["resp"]} in {r["seconds"]:6.2f} s '
                        f'({size / GiB / r["seconds"]:5.2f} GiB/s), size '
                        f'{lib.fmt_bytes(r["size"])}, backend +'
                        f'{lib.fmt_bytes(r["grown"])}, threads '
                        f'+{r["threads_extra"]}, cores busy '
                        f'{r["cores_qemu"]:.1f} QEMU + '
                        f'{r["cores_others"]:.1f} others'
                        if 'error' not in r else 'FAILED: ' + r['error']))

    # (a) memfd.  16 GiB of fresh memfd takes about a minute here: stock
    # and upstream only at 2 threads (they use one thread at either
    # setting, which their 4 GiB runs show with the threads counted).
    plug_cases('memfd', runs, 1,
               lambda key, t: key == 'on' or t == PREALLOC_THREADS[-1])
    # (b) the machine's ceiling, 4 KiB pages
    for t in PREALLOC_THREADS:
        bw[f'memfd/4G/{t}'] = m = membw(4 * GiB, t)
        log(f'  membw memfd 4 GiB, {t} thread(s): populate '
            f'{m["populate"]:.2f} GiB/s ({m["method"]}), memset '
            f'{m["memset"]:.2f} GiB/s, repopulate {m["repopulate"]:.2f} '
            f'GiB/s; others busy {m["cores_others"]:.1f} cores')
        time.sleep(PREALLOC_SETTLE)


    # (a) hugetlb: the pool reserved for these cases only, and given back
    # (also when the run is stopped: SIGTERM, SIGHUP, Ctrl-C).
    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    old_handlers = {s: signal.signal(s, stop)
                    for s in (signal.SIGTERM, signal.SIGHUP)}
    old = None
    try:
        old = hugepages()[0]
        out['hugetlb_before'] = old
        got = old
        for _ in range(3):     # the kernel compacts memory on each try
            if got >= HUGE_WANT:
                break
            got = hugepages(HUGE_WANT)[0]
            if got < HUGE_WANT:
                time.sleep(2)
        if got < HUGE_WANT or huge_free() < HUGE_WANT:
            out['hugetlb'] = (f'skipped: only {got} of {HUGE_WANT} huge pages '
                              f'of 2 MiB could be reserved ({huge_free()} '
                              'free)')
            log(f'  hugetlb: {out["hugetlb"]}')
        else:
            out['hugetlb'] = f'{got} huge pages of 2 MiB reserved'
            log(f'  hugetlb: {out["hugetlb"]} (nr_hugepages was {old})')
            # The pool's pages were given to the kernel by the hypervisor
            # on first touch only: touch them all once (measured too).
            bw['hugetlb/16G/2/first'] = m = membw(PREALLOC_DEV, 2, True)
            log(f'  membw hugetlb 16 GiB, 2 threads, first touch of the '
                f'pool: populate {m["populate"]:.2f} GiB/s, then repopulate '
                f'{m["repopulate"]:.2f} GiB/s')
            for t in PREALLOC_THREADS:
                bw[f'hugetlb/16G/{t}'] = m = membw(PREALLOC_DEV, t, True)
                log(f'  membw hugetlb 16 GiB, {t} thread(s): populate '
                    f'{m["populate"]:.2f} GiB/s, memset {m["memset"]:.2f} '
                    f'GiB/s, repopulate {m["repopulate"]:.2f} GiB/s')
            plug_cases('hugetlb', runs, min(runs, 2))
    except OSError as exc:
        out['hugetlb'] = f'skipped: {err_text(exc)}'
        log(f'  hugetlb: {out["hugetlb"]}')
    finally:
        if old is not None:
            hugepages(old)
            out['hugetlb_after'] = hugepages()[0]
            log(f'  hugetlb: nr_hugepages back to {out["hugetlb_after"]} '
                f'(was {old})')
        for s, h in old_handlers.items():
            signal.signal(s, h)

    # (c) a failing preallocation
    for key in keys:
        r = prealloc_failure(by_key[key])
        out.setdefault('failure', {})[key] = r
        log(f'  failure {key:6}: ' + (
            f'2 GiB on a 1 GiB tmpfs: {r["resp"]} after {r["seconds"]:.2f} s,'
            f' size {lib.fmt_bytes(r["size"])}, tmpfs used '
            f'{lib.fmt_bytes(r["used"])}; then 512 MiB: {r["resp_ok"]}, size '
            f'{lib.fmt_bytes(r["size_ok"])}, tmpfs used '
            f'{lib.fmt_bytes(r["used_ok"])}' if 'error' not in r else
            'FAILED: ' + r['error']) + f' -> {"PASS" if r["pass"] else "FAIL"}')

    # (d) incoming migration: the destinations that preallocate nothing,
    # then those that do, 1 and 2 threads taking turns
    cases, busy = [], []
    if 'up-on' in by_key:
        own = newest_q35(by_key['up-on'].binary)
    for t in PREALLOC_THREADS:
        if 'on' in by_key:
            cases.append(('on', PREALLOC_MACHINE, '', t, 'anon'))
        if 'up-on' in by_key:
            cases.append(('up-on', PREALLOC_MACHINE, '', t, 'anon'))
        if 'on' in by_key and 'x-prealloc-incoming' in lib.device_help(
                by_key['on'].binary):
            busy.append(('on', PREALLOC_MACHINE, 'x-prealloc-incoming=on', t,
                         'anon'))
        if 'up-on' in by_key:
            busy.append(('up-on', own, '', t, 'anon'))
    # A shared memfd destination (the zero-page check populates it)
    if 'on' in by_key:
        busy.append(('on', PREALLOC_MACHINE, '', 2, 'memfd'))
    for case in cases + ['warm-up'] + busy:
        if case == 'warm-up':
            # The first destination to populate 16 GiB pays for memory
            # unused for a while (the hypervisor's first touch: 40-60 s
            # instead of 5-15 s, whichever binary comes first; a populate
            # pass of membw does not help it), the next ones reuse what it
            # freed: the first preallocating case runs once more before,
            # and is recorded apart.
            if not busy:
                continue
            key, machine, props, threads, kind = busy[0]
            r = prealloc_incoming(by_key[key], machine, props, threads, kind)
            r['case'] = f'{key}/{machine}/{props or "-"}/{threads}/{kind}'
            out['incoming_warmup'] = r
            log('  incoming warm-up (the next case, discarded): ' + (
                f'{r["total_time"]:.2f} s' if 'error' not in r else
                'FAILED: ' + r['error']))
            continue
        key, machine, props, threads, kind = case
        name = f'{key}/{machine}/{props or "-"}/{threads}/{kind}'
        r = prealloc_incoming(by_key[key], machine, props, threads, kind)
        out.setdefault('incoming', {}).setdefault(name, []).append(r)
        log(f'  incoming {name:45}: ' + (
            f'{r["total_time"]:.2f} s, destination '
            f'+{lib.fmt_bytes(r["dst_grown"])} '
            f'{"RssAnon" if kind == "anon" else "RssShmem"} (peak '
            f'+{lib.fmt_bytes(r["dst_peak"])}), size '
            f'{lib.fmt_bytes(r["dst_size"])}, threads '
            f'+{r["dst_threads_extra"]}' +
            ''.join(f', {p} {r[p]}' for p in ('x-early-migration',
                                              'x-prealloc-incoming')
                    if p in r)
            if 'error' not in r else 'FAILED: ' + r['error']))
    out['seconds'] = time.monotonic() - t_start


def quick(args):
    t0 = time.monotonic()
    passed = failed = skipped = 0

    def result(ok, name, detail):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        log(f'{"PASS" if ok else "FAIL"}: {name}: {detail}')

    cfgs = {c.key: c for c in lib.configs()}
    ok, why = lib.kvm_usable()
    if not ok:
        log(f'SKIP: /dev/kvm is unusable ({why}): the 1 TiB idle-memory check '
            'needs a paused KVM VM and was NOT run')
        skipped += 3
    else:
        res = {}
        want = [cfgs['off'], cfgs['on']]
        if os.access(cfgs['up-on'].binary, os.X_OK):
            want.append(cfgs['up-on'])
        bench_idle(want, [TiB], args.runs or 3, res, META_PER_PAGE_DEFAULT)
        med = {}
        for key in [c.key for c in want]:
            base = lib.summary(r.get('vmalloc') for r in res['idle'][key]['0'])
            dev = lib.summary(r.get('vmalloc')
                              for r in res['idle'][key][str(TiB)])
            st = lib.summary(r.get('start')
                             for r in res['idle'][key][str(TiB)])
            errs = [r['error'] for r in res['idle'][key][str(TiB)]
                    if 'error' in r]
            med[key] = (dev['median'] - base['median'] if dev and base
                        else None, st['median'] if st else None,
                        errs[0] if errs else None)
        off, on = med['off'], med['on']
        if off[0] is None or on[0] is None:
            result(False, '1 TiB idle memory on/off',
                   f'no measurement (off: {off[2]}, on: {on[2]})')
        else:
            ratio = on[0] / off[0] if off[0] > 0 else float('inf')
            result(off[0] > 512 * MiB and ratio < args.max_ratio,
                   '1 TiB idle memory on/off',
                   f'off {lib.fmt_bytes(off[0], True)}, on '
                   f'{lib.fmt_bytes(on[0], True)}, ratio {ratio:.4f} '
                   f'(must be < {args.max_ratio}; off must cost > 512 MiB)')
        if off[1] is not None and on[1] is not None:
            # Not a check: the off start-up swings with the host's memory
            # state (0.3 s warm .. 6 s when the pages must be faulted in).
            log(f'INFO: 1 TiB idle start-up (median): off '
                f'{lib.fmt_secs(off[1])}, on {lib.fmt_secs(on[1])}')
        if 'up-on' in med and med['up-on'][0] is not None and \
                on[0] is not None:
            up = med['up-on'][0]
            result(on[0] <= up + 8 * MiB, '1 TiB idle memory vs upstream 10.0 on',
                   f'patched on {lib.fmt_bytes(on[0], True)}, upstream on '
                   f'{lib.fmt_bytes(up, True)} (may exceed it by 8 MiB at most)')
        else:
            log('SKIP: 1 TiB idle memory vs upstream 10.0 on: upstream '
                f'10.0 not available ({lib.UPSTREAM})')
            skipped += 1
    # Without KVM: the qtest driver plugs and unplugs 1 GiB with on.
    try:
        r = {}
        cfg = cfgs['on']
        with VM(cfg.binary, lib.machine_args(cfg, 'qtest', dev_size=TiB),
                qtest=True) as vm:
            dev = vq.VirtioMem(vm.qt).init()
            vm.qmp('qom-set', path=DEV, property='requested-size', value=TiB)
            dev.plug(0, GiB)
            got = dev.plugged_size()
            dev.unplug(0, GiB)
            result(got == GiB and dev.plugged_size() == 0,
                   'qtest plug/unplug 1 GiB with on',
                   f'plugged {lib.fmt_bytes(got)}, then '
                   f'{lib.fmt_bytes(dev.plugged_size())}')
    except (VMStartError, OSError, RuntimeError, vq.QtestError) as exc:
        result(False, 'qtest plug/unplug 1 GiB with on', err_text(exc))
    log(f'bench-quick took {time.monotonic() - t0:.0f} s')
    log(f'{passed} passed, {failed} failed' +
        (f', {skipped} skipped' if skipped else ''))
    return 1 if failed else 0


# -- main -------------------------------------------------------------------------------

def meta(cfgs, runs):
    host = socket.gethostname()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((ln.split(':', 1)[1].strip() for ln in f
                        if ln.startswith('model name')), '?')
    except OSError:
        cpu = '?'
    kvm = '?'
    try:
        out = subprocess.run(['lsmod'], capture_output=True, text=True,
                             check=False).stdout
        kvm = ', '.join(ln.split()[0] for ln in out.splitlines()
                        if ln.startswith('kvm')) or 'built in'
    except OSError:
        pass
    return {
        'date': datetime.date.today().isoformat(),
        'started': datetime.datetime.now().isoformat(timespec='seconds'),
        'host': host, 'kernel': platform.release(), 'cpu': cpu,
        'cores': os.cpu_count(),
        'mem_total': os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'),
        'kvm_modules': kvm, 'runs': runs,
        'configs': [{'key': c.key, 'label': c.label, 'binary': c.binary,
                     'version': lib.binary_version(c.binary),
                     'built': lib.binary_mtime(c.binary),
                     'dynamic': c.dynamic} for c in cfgs],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true',
                    help='CI check of the 1 TiB idle saving only')
    ap.add_argument('--max-ratio', type=float, default=0.1,
                    help='quick: bound of on/off 1 TiB VmallocUsed')
    ap.add_argument('--runs', type=int, default=0,
                    help='runs per measurement (default 5; quick 3)')
    ap.add_argument('--only', default=','.join(SECTIONS),
                    help='comma-separated items to run (default: '
                    f'{",".join(SECTIONS)})')
    ap.add_argument('--migration-timeout', type=float, default=300,
                    help='migration: cancel one after this many seconds '
                    '(recorded as cancelled, with what it sent by then)')
    ap.add_argument('--sizes', default='',
                    help='idle device sizes in GiB for idle, migration and '
                    'idle-cost (default 64,256,1024,4096,16384)')
    ap.add_argument('--configs', default='',
                    help='comma-separated config keys (default all)')
    ap.add_argument('--extra-binary', metavar='PATH',
                    help='one more patched QEMU, compared with '
                    'dynamic-memslots=on (config key extra-on), e.g. the '
                    'previous build')
    ap.add_argument('--extra-label', default='extra binary',
                    help='its name in the report (default: %(default)s)')
    ap.add_argument('--out', default=os.path.join(HERE, 'results'),
                    help='directory for the results')
    ap.add_argument('--name', default='',
                    help='results are OUT/<date>-NAME.{json,md} and '
                    'OUT/<date>-NAME-*.png (default: the host name)')
    ap.add_argument('--report', metavar='JSON',
                    help='only regenerate the report from saved results')
    args = ap.parse_args()
    if args.quick:
        return quick(args)
    if args.report:
        with open(args.report) as f:
            res = json.load(f)
        md = report.write(res, os.path.splitext(args.report)[0])
        log(f'wrote {md}')
        return 0

    runs = args.runs or 5
    only = set(args.only.split(','))
    if only - set(SECTIONS):
        ap.error(f'unknown --only items {",".join(sorted(only - set(SECTIONS)))}'
                 f' (known: {",".join(SECTIONS)})')
    sizes = ([int(x) * GiB for x in args.sizes.split(',')] if args.sizes
             else IDLE_SIZES)
    t0 = time.monotonic()
    cfgs = lib.configs(args.extra_binary, args.extra_label)
    if args.configs:
        cfgs = [c for c in cfgs if c.key in args.configs.split(',')]
    res = {'meta': meta(cfgs, runs), 'times': {}}
    # Unpatched 7.2 of the same build only where the series' own cost is
    # measured; elsewhere it would repeat stock 7.2.
    with_base = cfgs
    cfgs = [c for c in cfgs if c.key != 'base']
    # How this run was started (the patched binary's override included).
    env = [f'{v}={shlex.quote(os.environ[v])}'
           for v in ('BENCH_PATCHED_QEMU', 'BENCH_BASE_QEMU')
           if os.environ.get(v)]
    res['meta']['command'] = ' '.join(
        env +
        ['python3', 'bench/run.py'] + [shlex.quote(a) for a in sys.argv[1:]])
    for c in res['meta']['configs']:
        log(f'{c["key"]:7} {c["binary"]}\n        {c["version"]}')
    kvm_ok, why = lib.kvm_usable()
    res['meta']['kvm'] = 'usable' if kvm_ok else why
    if not kvm_ok:
        log(f'WARNING: KVM unusable ({why}): KVM items are recorded as failed')

    def section(name, fn):
        if name not in only:
            return
        log(f'== {name} ==')
        t = time.monotonic()
        try:
            fn()
        except Exception:   # pylint: disable=broad-except
            res.setdefault('crashed', {})[name] = traceback.format_exc()
            log(traceback.format_exc())
        res['times'][name] = time.monotonic() - t

    # Boot RAM first: its per-page figure guards the huge off devices.
    if only & {'idle', 'plugged', 'memslot-size', 'vhost'}:
        only.add('limit')
    section('limit', lambda: bench_limit(PLUG_SIZES, runs, res)
            if kvm_ok else None)
    per_page = limit_per_page(res) or META_PER_PAGE_DEFAULT
    res['meta']['meta_per_page'] = per_page
    section('idle', lambda: bench_idle(cfgs, sizes, runs, res, per_page)
            if kvm_ok else None)
    if only & {'plugged', 'memslot-size'} and 'idle' not in only:
        # Plugged cost is over the no-device VMs of item 1.
        only.add('baseline')
        section('baseline', lambda: bench_idle(cfgs, [], runs, res, per_page)
                if kvm_ok else None)
    section('plugged', lambda: bench_plugged(cfgs, PLUG_SIZES, runs, res)
            if kvm_ok else None)
    on = [c for c in cfgs if c.key == 'on']
    section('memslot-size', lambda: bench_memslot(on[0], runs, 2 * runs + 1,
                                                  res)
            if kvm_ok and on else res.setdefault('memslot', {
                'error': f'not run: {why or "no patched on configuration"}'}))
    section('vhost', lambda: bench_vhost(cfgs, min(runs, 3), res)
            if kvm_ok else None)
    # Requests are cheap and noisy: more repetitions than runs elsewhere.
    section('requests', lambda: bench_requests(
        with_base, ['qtest', 'tcg-paused'] + (['kvm'] if kvm_ok else []),
        2 * runs + 1, res))
    section('guest', lambda: bench_guest(
        [c for c in cfgs if c.key in ('stock', 'off', 'on')], GUEST_SIZES,
        runs, res))
    # Each run boots a guest under TCG: fewer runs than elsewhere.
    section('tcg-reset', lambda: bench_tcg_reset(cfgs, min(runs, 3), res))
    section('tcg-hotpath', lambda: bench_tcg_hotpath(with_base, runs, res))
    section('migration', lambda: bench_migration(
        cfgs, mig_cases(sizes), runs, res, args.migration_timeout))
    section('kvm-migration', lambda: bench_kvm_migration(
        with_base, runs, res, args.migration_timeout) if kvm_ok else None)
    if 'idle-cost' in only and 'migration' not in only:
        # Its migration rows: the no-device VM, idle 4 / 16 TiB devices,
        # 16 GiB plugged into the largest one and 16 GiB of boot RAM.
        only.add('idle-cost-migration')
        section('idle-cost-migration', lambda: bench_migration(
            cfgs, mig_cases(sizes, False), runs, res,
            args.migration_timeout))
    # Without KVM: a paused TCG VM (the report says so).
    section('idle-cost', lambda: bench_idle_cost(
        cfgs, sizes, runs, res, per_page, 'kvm' if kvm_ok else 'tcg-paused'))
    section('prealloc', lambda: bench_prealloc(cfgs, min(runs, 3), res))
    res['meta']['seconds'] = time.monotonic() - t0
    # build/bin/qemu-system-x86_64 may be replaced while we run: say so.
    for c in res['meta']['configs']:
        now = lib.binary_mtime(c['binary'])
        if now != c['built']:
            res['meta'].setdefault('replaced', []).append(
                f'{c["label"]}: {os.path.relpath(c["binary"], lib.ROOT)} was '
                f'replaced during the run (modified {c["built"]} at the '
                f'start, {now} at the end): its figures may come from '
                'either build')

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f'{res["meta"]["date"]}-'
                        f'{args.name or res["meta"]["host"]}')
    with open(stem + '.json', 'w') as f:
        json.dump(res, f, indent=1, sort_keys=True)
    md = report.write(res, stem)
    log(f'wrote {stem}.json and {md} in {res["meta"]["seconds"]:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
