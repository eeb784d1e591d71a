"""Helpers for the cost suite (tests/cost) and its hooks into the shared runner
(tests/lib/suite.py): the context printed for its QEMUMachine-based VMs,
its header line.

Every test compares dynamic-memslots=on with =off (the qemu-* tests: with
the same VM without the device) in the same run, on paused VMs (-accel tcg
-S, -cpu qemu64 on both sides of a migration; no guest, no KVM): QEMUs are
launched with bench/lib.py's VM (QEMU's python/qemu, killed by PID on exit),
memory is plugged and unplugged by the qtest virtio-mem driver
(tests/lib/vmemqtest.py), migration streams go to bench/lib.py's StreamSink
(a unix socket whose reader counts the bytes and drops them).

Each test is a function taking a Ctx `t`, registered with @test(name); the
runner prints PASS/FAIL/SKIP per test, the figures every test recorded, and
ends with 'N passed, N failed, N skipped'.
"""

import os
import re
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'lib'))
sys.path.insert(0, os.path.join(ROOT, 'bench'))

# pylint: disable=wrong-import-position
import lib as bench  # noqa: E402  bench/lib.py
from lib import (VM, StreamSink, fmt_bytes,  # noqa: E402
                 meminfo, proc_status, reset_peak_rss, settle_rss,
                 wait_binary)
import suite  # noqa: E402
from suite import Failure, Skip  # noqa: E402,F401
import vmemqtest as vq  # noqa: E402
from vmguest import parse_mtree  # noqa: E402

KiB, MiB, GiB, TiB = bench.KiB, bench.MiB, bench.GiB, bench.TiB

QEMU = os.environ.get('QEMU_BINARY') or os.path.join(
    ROOT, 'build', 'bin', 'qemu-system-x86_64')
MACHINE = 'pc-q35-7.2'
# TCG keeps qemu64's own vendor on every host (KVM would take the host's).
ACCEL = ['-accel', 'tcg', '-S', '-cpu', 'qemu64']
# ... and for devices of TiBs: qemu64 has 40 physical address bits under
# TCG (1 TiB), whatever the host has.
ACCEL_WIDE = ['-accel', 'tcg', '-S', '-cpu', 'qemu64,phys-bits=48']
DEV = '/machine/peripheral/vmem0'
BOOT_RAM = 2 * GiB
PLUG = 1 * GiB              # plugged by the unplug-all and postcopy cases
# Growth (RSS or the backend's allocated bytes) at which a run is stopped:
# the assertion has failed long before, and a broken build must not make a
# 2-core, 24 GiB machine shared by others allocate a whole device.
STOP_AT = int(os.environ.get('COST_STOP_AT_MIB', '1024')) * MiB
MIN_AVAILABLE = 3 * GiB     # ... nor push MemAvailable below this
STATES = ('idle', 'unplug-all')
QMP_TIMEOUT = 60


# -- the runner -------------------------------------------------------------

class Ctx(suite.Ctx):
    """Per-test state: its VMs, a scratch directory, figures (the notes)."""

    def __init__(self, name):
        super().__init__(name)
        self.tmp = tempfile.mkdtemp(prefix='cost-')
        self._dirs = [self.tmp]

    def figure(self, msg):
        """A measured figure, repeated in the final summary."""
        self.notes.append(msg)
        self.log(msg)

    def vm(self, args, qtest=False, name=None):
        """Launch a QEMU (QMP, optionally the qtest socket) owned by the
        test; the runner kills it by PID when the test ends."""
        wait_binary(QEMU)
        if qtest:
            args = list(args) + ['-qtest-log', '/dev/null']
        vm = VM(QEMU, args, qtest=qtest)
        vm.name = name or f'vm{len(self.vms)}'
        self.vms.append(vm)
        vm.__enter__()
        # A wedged QEMU fails the test instead of hanging it.
        vm.m._qmp.settimeout(QMP_TIMEOUT)  # pylint: disable=protected-access
        return vm

    def mkdtemp(self, where):
        """A scratch directory under `where`, removed when the test ends."""
        d = tempfile.mkdtemp(prefix='cost-', dir=where)
        self._dirs.append(d)
        return d

    def kill(self, vm):
        vm.killed = True
        vm.close()


class CostSuite(suite.Suite):
    def header(self, n):
        return f'cost: {n} tests; QEMU {QEMU}'

    def reason(self, t, exc):
        """... and ' (QEMU NAME exited with status N)' for each VM of the
        test whose QEMU ended by itself."""
        reason = super().reason(t, exc)
        for vm in t.vms:
            popen = vm.m._popen  # pylint: disable=protected-access
            if popen is not None and popen.poll() is not None and \
                    not getattr(vm, 'killed', False):
                reason += f' (QEMU {vm.name} exited with status ' \
                          f'{popen.returncode})'
        return reason

    def print_vm(self, vm):
        # pylint: disable=protected-access
        print(f'    ==== {vm.name} (pid {vm.pid}): '
              + ' '.join(vm.m._qemu_full_args or [vm.binary] + vm.args))
        out = ''
        if vm.m._qemu_log_path and os.path.exists(vm.m._qemu_log_path):
            with open(vm.m._qemu_log_path, errors='replace') as f:
                out = f.read()
        else:
            out = vm.m.get_log() or ''
        for line in out.strip().splitlines()[-15:]:
            print('    | ' + line)

    def stop_vm(self, vm):
        vm.close()

    def cleanup(self, t):
        for d in t._dirs:  # pylint: disable=protected-access
            shutil.rmtree(d, ignore_errors=True)


SUITE = CostSuite(HERE, Ctx, 'figures')
test = SUITE.test
run_tests = SUITE.run


# -- VM configuration ---------------------------------------------------------

def mode_name(dynamic):
    return 'on' if dynamic else 'off'


def sparse_dir():
    """A directory for memory-backend-file whose filesystem keeps holes:
    (path, None) or (None, why not)."""
    for base in (os.environ.get('COST_FILE_DIR'), '/var/tmp', '/tmp'):
        if not base or not os.path.isdir(base):
            continue
        try:
            with tempfile.NamedTemporaryFile(dir=base) as f:
                f.truncate(GiB)
                if os.fstat(f.fileno()).st_blocks == 0:
                    return base, None
        except OSError:
            continue
    return None, 'no writable directory with sparse files ($COST_FILE_DIR, ' \
                 '/var/tmp, /tmp)'


def hugepage_size():
    """(bytes, None) of a huge page size the host has free pages of, or
    (None, why not).  Host settings are never changed."""
    root = '/sys/kernel/mm/hugepages'
    found = []
    try:
        for d in sorted(os.listdir(root)):
            with open(os.path.join(root, d, 'free_hugepages')) as f:
                free = int(f.read())
            found.append(f'{d} {free} free')
            if free > 0:
                return int(re.sub(r'\D', '', d)) * KiB, None
    except OSError as exc:
        return None, f'cannot read {root}: {exc}'
    return None, (f'no free huge pages on this host (HugePages_Total '
                  f'{(meminfo("HugePages_Total") or 0) // KiB}; '
                  f'{", ".join(found) or root + " is empty"}); the tests do '
                  'not change host settings')


class Backend:
    """The device's memory backend: its -object text and how to read how
    much of it is allocated."""

    def __init__(self, kind, size, tmp, hugepage=None):
        self.kind, self.size = kind, size
        self.path = None
        mib = size // MiB
        if kind == 'ram':
            self.obj = f'memory-backend-ram,id=mem0,size={mib}M,reserve=off'
        elif kind == 'memfd':
            self.obj = (f'memory-backend-memfd,id=mem0,size={mib}M,'
                        'share=on,reserve=off')
        elif kind == 'hugetlb':
            self.obj = (f'memory-backend-memfd,id=mem0,size={mib}M,share=on,'
                        f'hugetlb=on,hugetlbsize={hugepage},reserve=off')
        elif kind == 'file':
            self.path = os.path.join(tmp, 'mem0')
            self.obj = (f'memory-backend-file,id=mem0,size={mib}M,'
                        f'mem-path={self.path},share=on')
        else:
            raise ValueError(kind)
        self._fd = {}

    def allocated(self, pid):
        """Bytes the backend has allocated (memfd / file blocks), or None
        (memory-backend-ram: use the process RSS)."""
        if self.kind == 'file':
            return os.stat(self.path).st_blocks * 512
        if self.kind != 'memfd':
            return None
        fd = self._fd.get(pid)
        if fd is None:
            fd_dir = f'/proc/{pid}/fd'
            for name in os.listdir(fd_dir):
                p = os.path.join(fd_dir, name)
                try:
                    if os.readlink(p).startswith('/memfd:') and \
                            os.stat(p).st_size == self.size:
                        fd = p
                        break
                except OSError:
                    continue
            if fd is None:
                raise Failure(f'no memfd of {fmt_bytes(self.size)} among '
                              f'the open files of QEMU pid {pid}')
            self._fd[pid] = fd
        return os.stat(fd).st_blocks * 512


def vm_args(backend, dynamic, boot=BOOT_RAM, incoming=False, accel=None):
    """A paused q35 VM with `boot` of boot RAM and one virtio-mem device
    (nothing plugged) on `backend`.  accel: instead of ACCEL."""
    args = ['-machine', MACHINE, '-nodefaults'] + (accel or ACCEL) + [
        '-m', f'{boot // MiB}M,maxmem={(boot + backend.size) // MiB}M',
        '-object', backend.obj,
        '-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,requested-size=0,'
                   'unplugged-inaccessible=on,'
                   f'dynamic-memslots={mode_name(dynamic)}']
    if incoming:
        args += ['-incoming', 'defer']
    return args


def plain_args(boot=BOOT_RAM, incoming=False, accel=None):
    """The VM of vm_args() without the device (and without maxmem)."""
    args = ['-machine', MACHINE, '-nodefaults'] + (accel or ACCEL) + [
        '-m', f'{boot // MiB}M']
    return args + (['-incoming', 'defer'] if incoming else [])


def bitmap_bytes(size, bits=4):
    """What QEMU 7.2 keeps per RAM block of `size`: 1 bit per 4 KiB page
    for each of its 3 dirty-memory clients, and 1 for migration's bitmap
    (or the destination's received bitmap) while it migrates."""
    return size // (4 * KiB) * bits // 8


def host_guard(t, need, what):
    """Skip unless the host can give `need` bytes (what a build that keeps
    today's bitmaps would allocate) and keep MIN_AVAILABLE free."""
    avail = meminfo('MemAvailable') or 0
    if avail - need < MIN_AVAILABLE:
        t.skip(f'{what} may need {fmt_bytes(need)} of host memory, '
               f'MemAvailable is {fmt_bytes(avail)} (keeping '
               f'{fmt_bytes(MIN_AVAILABLE)} free)')


def device_size(vm):
    for dev in vm.qmp('query-memory-devices'):
        if dev['type'] == 'virtio-mem' and dev['data'].get('id') == 'vmem0':
            return dev['data']['size']
    raise Failure('query-memory-devices does not list vmem0')


def mapped_memslots(vm):
    """Indices of the memslot aliases of mem0 mapped in 'memory'."""
    out = []
    for reg in parse_mtree(vm.qmp('human-monitor-command',
                                  **{'command-line': 'info mtree'})):
        m = re.fullmatch(r'memslot-(\d+)', reg.get('name', ''))
        if m and reg.get('alias') == 'mem0':
            out.append(int(m.group(1)))
    return out


def plug(t, vm, dynamic, size=PLUG):
    """Plug `size` at the start of the device through the qtest driver."""
    dev = vq.VirtioMem(vm.qt).init()
    vm.qmp('qom-set', path=DEV, property='requested-size', value=size)
    dev.plug(0, size)
    t.check(dev.plugged_size() == size and device_size(vm) == size,
            f'plugged {fmt_bytes(dev.plugged_size())}, device size '
            f'{fmt_bytes(device_size(vm))}, want {fmt_bytes(size)}')
    if dynamic:
        t.check(mapped_memslots(vm), f'{fmt_bytes(size)} plugged with on, '
                                     'but no memslot alias is mapped')
    return dev


def prepare(t, vm, state, dynamic):
    """Bring the device into `state`: 'idle' (never plugged), 'unplug-all'
    (PLUG plugged, then requested-size 0 and UNPLUG_ALL), 'plugged'."""
    if state == 'idle':
        t.check(device_size(vm) == 0, 'idle device has a size')
        return
    dev = plug(t, vm, dynamic)
    if state == 'plugged':
        return
    vm.qmp('qom-set', path=DEV, property='requested-size', value=0)
    dev.request(vq.UNPLUG_ALL)
    t.check(dev.plugged_size() == 0 and device_size(vm) == 0,
            f'after unplug-all: plugged {fmt_bytes(dev.plugged_size())}, '
            f'device size {fmt_bytes(device_size(vm))}')
    if dynamic:
        left = mapped_memslots(vm)
        t.check(not left, f'memslot aliases {left} still mapped after '
                          'unplug-all')


# -- measuring --------------------------------------------------------------

class Sampler:
    """A thread that samples, every 20 ms, the QEMU process's memory
    (VmRSS + HugetlbPages), the backend's allocated bytes and the host's
    Shmem, and keeps the largest growth over the first sample.  `over` is
    set (with the reason) once the growth passes STOP_AT or MemAvailable
    drops below MIN_AVAILABLE: the caller then stops the run."""

    def __init__(self, pid, backend=None, limit=STOP_AT):
        self.pid, self.backend, self.limit = pid, backend, limit
        # VmHWM restarts from here, for peak_rss() (False: not allowed).
        self.hwm = reset_peak_rss(pid)
        self.base = self._sample()
        self.peak = dict.fromkeys(self.base, 0)
        self.last = dict(self.base)
        self.over = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self):
        rss = proc_status(self.pid, 'VmRSS') or 0
        rss += proc_status(self.pid, 'HugetlbPages') or 0
        s = {'rss': rss, 'shmem': meminfo('Shmem')}
        if self.backend is not None:
            alloc = self.backend.allocated(self.pid)
            if alloc is not None:
                s['backend'] = alloc
        return s

    def take(self):
        try:
            cur = self._sample()
        except (OSError, TypeError):
            return      # the process is gone
        self.last = cur
        for k, v in cur.items():
            self.peak[k] = max(self.peak[k], v - self.base[k])
        worst = max(self.peak['rss'], self.peak.get('backend', 0))
        if self.over is None:
            if worst > self.limit:
                self.over = (f'stopped: QEMU grew by {fmt_bytes(worst)} '
                             f'(limit {fmt_bytes(self.limit)})')
            elif (meminfo('MemAvailable') or 0) < MIN_AVAILABLE:
                self.over = (f'stopped: host MemAvailable below '
                             f'{fmt_bytes(MIN_AVAILABLE)}')

    def _run(self):
        while not self._stop.wait(0.02):
            self.take()

    def stop(self, after=0.3):
        """Stop sampling, after one last sample `after` seconds later."""
        time.sleep(after)
        self._stop.set()
        self._thread.join(5)
        self.take()
        return self.peak

    def peak_rss(self):
        """The largest VmRSS (+ HugetlbPages) of the QEMU while sampled:
        the largest sample, or VmHWM since the start if that is larger
        (it sees peaks between samples).  Call before the QEMU is gone."""
        peak = self.base['rss'] + self.peak['rss']
        if self.hwm:
            try:
                peak = max(peak, proc_status(self.pid, 'VmHWM') or 0)
            except OSError:
                pass
        return peak

    def text(self):
        p = self.peak
        s = f'RSS +{fmt_bytes(p["rss"])}'
        if 'backend' in p:
            s += f', backend allocated +{fmt_bytes(p["backend"])}'
        return s + f', host Shmem +{fmt_bytes(p["shmem"])}'


def migration_caps(vm, **caps):
    vm.qmp('migrate-set-capabilities', capabilities=[
        {'capability': k.replace('_', '-'), 'state': v}
        for k, v in caps.items()])


def _follow(t, vm, samplers, t0, timeout, stop, where):
    """Poll vm's migration until it ends; stop it (see migrate_to_sink) if
    a sampler says so or after `timeout`.  where(): how far it got, for
    the log.  Returns (status, info, ram, why it was stopped or None)."""
    stopped, ram, info = None, {}, {}
    while True:
        info = vm.qmp('query-migrate')
        status = info.get('status')
        ram = info.get('ram', ram)
        if status in ('completed', 'failed', 'cancelled'):
            break
        why = next((s.over for s in samplers if s.over), None) or (
            f'stopped: not done after {timeout}s'
            if time.monotonic() - t0 > timeout else None)
        if why and not stopped:
            stopped = why
            how = 'migrate_cancel' if stop == 'cancel' else 'kill'
            t.log(f'{why}: {how} at {where()}')
            if stop == 'kill':
                for s in samplers:
                    s.take()
                t.kill(vm)
                status = 'killed'
                break
            vm.qmp('migrate_cancel')
        time.sleep(0.05)
    return status, info, ram, stopped


def migrate_to_sink(t, vm, sampler, timeout=180, stop='cancel'):
    """Migrate vm into a StreamSink while `sampler` watches; stop the
    migration if the sampler says so or after `timeout`: stop='cancel'
    sends migrate_cancel, stop='kill' kills the QEMU (a background snapshot
    cancelled while a vCPU waits on a write-protected page hangs 7.2).
    Returns {'status', 'bytes', 'seconds', 'info', 'ram', 'stopped'}."""
    path = tempfile.mktemp(prefix='mig-', suffix='.sock', dir=t.tmp)
    with StreamSink(path) as sink:
        t0 = time.monotonic()
        vm.qmp('migrate', uri=sink.uri)
        status, info, ram, stopped = _follow(
            t, vm, [sampler], t0, timeout, stop,
            lambda: f'{fmt_bytes(sink.count)} of stream')
        seconds = time.monotonic() - t0
        sink.wait(30)
        nbytes = sink.count
    sampler.stop(after=0 if status == 'killed' else 0.3)
    return {'status': status, 'bytes': nbytes, 'seconds': seconds,
            'info': info, 'ram': ram, 'stopped': stopped}


def migrate_to_vm(t, src, dst, samplers, timeout=180):
    """Migrate src into dst (started with -incoming defer) over a unix
    socket while `samplers` watch (stopped with migrate_cancel like
    migrate_to_sink), wait until dst has left 'inmigrate', then stop the
    samplers.  Returns migrate_to_sink's dict, 'bytes' being the source's
    ram 'transferred', plus 'dst_status'."""
    uri = 'unix:' + tempfile.mktemp(prefix='mig-', suffix='.sock',
                                    dir=t.tmp)
    dst.qmp('migrate-incoming', uri=uri)
    t0 = time.monotonic()
    src.qmp('migrate', uri=uri)

    def where():
        ram = src.qmp('query-migrate').get('ram', {})
        return f'{fmt_bytes(ram.get("transferred", 0))} sent'

    status, info, ram, stopped = _follow(t, src, samplers, t0, timeout,
                                         'cancel', where)
    seconds = time.monotonic() - t0

    def dst_state():
        try:
            return dst.qmp('query-status')['status']
        except Exception:   # pylint: disable=broad-except
            return 'gone (QEMU exited)'

    deadline = time.monotonic() + 60
    dst_status = dst_state()
    while status == 'completed' and dst_status == 'inmigrate' and \
            time.monotonic() < deadline:
        time.sleep(0.05)
        dst_status = dst_state()
    for s in samplers:
        s.stop()
    return {'status': status, 'bytes': ram.get('transferred', 0),
            'seconds': seconds, 'info': info, 'ram': ram,
            'stopped': stopped, 'dst_status': dst_status}


def run_text(r):
    """One line about a migrate_to_sink() result."""
    s = (f'{fmt_bytes(r["bytes"])} ({r["bytes"]} B) in {r["seconds"]:.2f}s, '
         f'{r["ram"].get("duplicate", "?")} zero pages')
    if r['status'] != 'completed':
        s += f', {r["status"]}'
        if r['info'].get('error-desc'):
            s += f' ({r["info"]["error-desc"]})'
    if r['stopped']:
        s += f' [{r["stopped"]}; the stream size is a lower bound]'
    return s


GROWTH_BOUND = 64 * MiB


def run_on_growth(t, run_on, bound=GROWTH_BOUND):
    """run_on() -> (migrate_to_sink result, Sampler peak).  Host Shmem is
    the whole host's and others may move it: when only it is over `bound`
    while the QEMU's own RSS and backend stayed below, run once more (and
    say so).  Returns (result, peak, {what: growth} over bound)."""
    for attempt in (1, 2):
        r, peak = run_on()
        over = {k: v for k, v in peak.items() if v >= bound}
        if list(over) == ['shmem'] and attempt == 1:
            t.log(f'host Shmem grew {fmt_bytes(peak["shmem"])} while the '
                  'QEMU and its backend did not (another process?): '
                  'measuring once more')
            continue
        return r, peak, over
    raise AssertionError('not reached')


def check_growth(t, over, bound=GROWTH_BOUND):
    t.check(not over, f'on: grew by {fmt_bytes(bound)} or more: ' + ', '.join(
        f'{k} +{fmt_bytes(v)}' for k, v in over.items()))


def check_stream(t, off, on, what='stream'):
    """off completed; on completed with at most off's bytes + 1%."""
    t.check(off['status'] == 'completed',
            f'off: migration {off["status"]} {off["stopped"] or ""}')
    if on['stopped'] or on['status'] != 'completed':
        raise Failure(f'on: migration {on["status"]}, '
                      f'{on["stopped"] or ""} after {on["seconds"]:.1f}s, '
                      f'{fmt_bytes(on["bytes"])} of {what} by then (off: '
                      f'{fmt_bytes(off["bytes"])} in all)')
    t.check(on['bytes'] <= off['bytes'] * 1.01,
            f'on: {what} {fmt_bytes(on["bytes"])} vs off '
            f'{fmt_bytes(off["bytes"])} (ratio '
            f'{on["bytes"] / off["bytes"]:.2f}, limit 1.01)')
