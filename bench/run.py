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
    virtio-mem driver (bench/vmemqtest.py) on a paused KVM VM, against the
    physical limit (the same amount of ordinary boot RAM, measured here);
 3. QEMU-side request cost, driven by the qtest driver under -accel qtest and
    on a paused KVM VM: plug/unplug of 1 GiB, bursts of block-sized requests,
    one memory transaction with 256 aliases mapped;
 4. guest-visible latency under TCG: qom-set requested-size until the guest's
    MemTotal changes (tests/lib/vmguest.py guest).

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
import socket
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position
import lib  # noqa: E402
from lib import GiB, MiB, TiB, VM, VMStartError  # noqa: E402
import vmemqtest as vq  # noqa: E402
import report  # noqa: E402

IDLE_SIZES = [64 * GiB, 256 * GiB, 1 * TiB, 4 * TiB, 16 * TiB]
PLUG_DEV = 1 * TiB
PLUG_SIZES = [1 * GiB, 4 * GiB, 16 * GiB, 64 * GiB]
GUEST_SIZES = [1 * GiB, 4 * GiB, 16 * GiB]
GUEST_DEV = 1 * TiB
# Host kernel memory the benchmark leaves free (vmalloc'd memslot metadata
# is not reclaimable: a VM that would eat it all makes the host OOM-kill).
HEADROOM = 4 * GiB
META_PER_PAGE_DEFAULT = 10.05      # bytes per 4 KiB, refined by item 2

DEV = '/machine/peripheral/vmem0'


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
            args = lib.machine_args(cfg, 'kvm', dev_size=PLUG_DEV)
            try:
                r = measure_kvm_vm(cfg.binary, args, qtest=True,
                                   after=plug_steps)
            except (VMStartError, OSError, RuntimeError,
                    vq.QtestError) as exc:
                r = {'error': err_text(exc)}
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
    for _ in range(reps):
        # The driver's own round trip: a STATE request changes nothing.
        r['state'].append(timed(lambda: dev.request(vq.STATE, dev.addr, nblk)))
        r['plug_1g'].append(timed(lambda: dev.request(vq.PLUG, dev.addr,
                                                      nblk)))
        r['unplug_1g'].append(timed(lambda: dev.request(vq.UNPLUG, dev.addr,
                                                        nblk)))
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


# -- quick (CI) check ---------------------------------------------------------------------

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
    ap.add_argument('--only', default='idle,plugged,requests,guest',
                    help='comma-separated items to run')
    ap.add_argument('--configs', default='',
                    help='comma-separated config keys (default all)')
    ap.add_argument('--out', default=os.path.join(HERE, 'results'),
                    help='directory for the results')
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
    t0 = time.monotonic()
    cfgs = lib.configs()
    if args.configs:
        cfgs = [c for c in cfgs if c.key in args.configs.split(',')]
    res = {'meta': meta(cfgs, runs), 'times': {}}
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
    if only & {'idle', 'plugged'}:
        only.add('limit')
    section('limit', lambda: bench_limit(PLUG_SIZES, runs, res)
            if kvm_ok else None)
    per_page = limit_per_page(res) or META_PER_PAGE_DEFAULT
    res['meta']['meta_per_page'] = per_page
    section('idle', lambda: bench_idle(cfgs, IDLE_SIZES, runs, res, per_page)
            if kvm_ok else None)
    if 'plugged' in only and 'idle' not in only:
        # Plugged cost is over the no-device VMs of item 1.
        only.add('baseline')
        section('baseline', lambda: bench_idle(cfgs, [], runs, res, per_page)
                if kvm_ok else None)
    section('plugged', lambda: bench_plugged(cfgs, PLUG_SIZES, runs, res)
            if kvm_ok else None)
    # Requests are cheap and noisy: more repetitions than runs elsewhere.
    section('requests', lambda: bench_requests(
        cfgs, ['qtest', 'tcg-paused'] + (['kvm'] if kvm_ok else []),
        2 * runs + 1, res))
    section('guest', lambda: bench_guest(
        [c for c in cfgs if c.key in ('stock', 'off', 'on')], GUEST_SIZES,
        runs, res))
    res['meta']['seconds'] = time.monotonic() - t0

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f'{res["meta"]["date"]}-{res["meta"]["host"]}')
    with open(stem + '.json', 'w') as f:
        json.dump(res, f, indent=1, sort_keys=True)
    md = report.write(res, stem)
    log(f'wrote {stem}.json and {md} in {res["meta"]["seconds"]:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
