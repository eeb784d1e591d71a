"""Shared helpers of the benchmarks: the QEMUs compared, launching them
(QEMU's in-tree python/qemu), host kernel memory readings, statistics."""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, os.path.join(ROOT, 'build', 'qemu', 'python'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'lib'))   # vmemqtest

from qemu.machine import QEMUMachine  # noqa: E402  pylint: disable=C0413

from vmemqtest import Qtest  # noqa: E402  pylint: disable=C0413

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# The patched build; $BENCH_PATCHED_QEMU overrides it (e.g. a copy of it
# while build/bin is being rebuilt).
PATCHED = os.path.abspath(os.environ.get('BENCH_PATCHED_QEMU') or
                          os.path.join(ROOT, 'build', 'bin',
                                       'qemu-system-x86_64'))
STOCK_DIR = os.path.join(ROOT, 'build', 'peers', 'stock-7.2')
UPSTREAM = os.path.join(ROOT, 'build', 'peers', 'upstream-10.0',
                        'qemu-system-x86_64')
# Unpatched 7.2 built here like PATCHED (scripts/build-base-qemu.sh): what
# differs from PATCHED is the series alone.  $BENCH_BASE_QEMU overrides it
# together with $BENCH_PATCHED_QEMU, e.g. with the unpatched and the patched
# package (make bench-deb-hotpath).
BASE = os.path.abspath(os.environ.get('BENCH_BASE_QEMU') or
                       os.path.join(ROOT, 'build', 'peers', 'base-7.2',
                                    'qemu-system-x86_64'))
KVM_CPU = ['-cpu', 'qemu64,host-phys-bits=on']


def stock_binary():
    """Debian's stock 7.2 (scripts/fetch-stock-qemu.sh): its wrapper if it
    made one, else the unpacked binary; $BENCH_STOCK_QEMU overrides."""
    env = os.environ.get('BENCH_STOCK_QEMU')
    if env:
        return env
    for p in (os.path.join(STOCK_DIR, 'qemu-system-x86_64'),
              os.path.join(STOCK_DIR, 'usr', 'bin', 'qemu-system-x86_64')):
        if os.access(p, os.X_OK):
            return p
    return os.path.join(STOCK_DIR, 'usr', 'bin', 'qemu-system-x86_64')


class Config:
    """One QEMU configuration compared: a binary plus the virtio-mem setting."""

    def __init__(self, key, label, binary, dynamic, fw_args=()):
        self.key, self.label, self.binary = key, label, binary
        self.dynamic = dynamic          # None: property not given (stock)
        self.fw_args = list(fw_args)

    def vmem_props(self):
        props = 'unplugged-inaccessible=on'
        if self.dynamic is not None:
            props += ',dynamic-memslots=' + ('on' if self.dynamic else 'off')
        return props

    def __repr__(self):
        return self.key


def configs(extra_binary=None, extra_label=None):
    """Every QEMU finds its firmware itself: the patched build and Debian's
    7.2 (scripts/fetch-stock-qemu.sh links its data directories) look in
    Debian's /usr/share, upstream's wrapper passes -L for its own prefix.
    'base' takes part only where the series' own cost is the question
    (bench/run.py main(): items 3, 5b and 7b).
    extra_binary: one more patched build (e.g. an older one, or the
    series' Debian package), compared with dynamic-memslots=off and on as
    'extra-off' and 'extra-on'."""
    out = [
        Config('stock', 'stock 7.2', stock_binary(), None),
        Config('off', 'patched off', PATCHED, False),
        Config('on', 'patched on', PATCHED, True),
        Config('up-off', 'upstream 10.0 off', UPSTREAM, False),
        Config('up-on', 'upstream 10.0 on', UPSTREAM, True),
        Config('base', 'unpatched 7.2, same build', BASE, None),
    ]
    if extra_binary:
        for key, dyn in (('extra-off', False), ('extra-on', True)):
            out.append(Config(key, (extra_label or 'extra binary') +
                              (' on' if dyn else ' off'),
                              os.path.abspath(extra_binary), dyn))
    return out


def binary_version(binary):
    try:
        out = subprocess.run([binary, '--version'], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return out.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f'unusable: {exc}'


def binary_mtime(binary):
    """When the binary was last modified (ISO, UTC), or None."""
    try:
        path = os.path.realpath(binary)
        return time.strftime('%Y-%m-%dT%H:%M:%SZ',
                             time.gmtime(os.stat(path).st_mtime))
    except OSError:
        return None


_HELP = {}


def device_help(binary, dev='virtio-mem-pci'):
    """`binary -device DEV,help` (the properties it knows), cached."""
    if (binary, dev) not in _HELP:
        try:
            p = subprocess.run([binary, '-device', f'{dev},help'],
                               capture_output=True, text=True, timeout=30,
                               check=False)
            _HELP[(binary, dev)] = p.stdout + p.stderr
        except (OSError, subprocess.SubprocessError) as exc:
            return f'unusable: {exc}'
    return _HELP[(binary, dev)]


def wait_binary(path, timeout=120):
    """build/bin/qemu-system-x86_64 is replaced now and then: wait for it."""
    deadline = time.monotonic() + timeout
    while not os.access(path, os.X_OK):
        if time.monotonic() > deadline:
            raise FileNotFoundError(path)
        time.sleep(1)


# -- host kernel memory --------------------------------------------------------

def _kib_field(path, name):
    """The 'name:  N kB' line of a /proc file, in bytes (None if absent)."""
    with open(path) as f:
        for line in f:
            if line.startswith(name + ':'):
                return int(line.split()[1]) * KiB
    return None


def meminfo(name):
    return _kib_field('/proc/meminfo', name)


def vmalloc_used():
    v = meminfo('VmallocUsed')
    if v is None:
        raise RuntimeError('no VmallocUsed in /proc/meminfo')
    return v


def mem_available():
    return meminfo('MemAvailable') or 0


def proc_status(pid, name):
    """A size field (VmRSS, VmHWM, RssShmem, ...) of /proc/PID/status."""
    return _kib_field(f'/proc/{pid}/status', name)


def reset_peak_rss(pid):
    """Make VmHWM restart from the current VmRSS (clear_refs 5, Linux >=
    4.0); False if not allowed."""
    try:
        with open(f'/proc/{pid}/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def settle_rss(pid, timeout=10, tol=256 * KiB, period=0.1):
    """VmRSS of pid once two readings in a row agree within tol."""
    deadline = time.monotonic() + timeout
    last = proc_status(pid, 'VmRSS')
    stable = 0
    while time.monotonic() < deadline and stable < 2:
        time.sleep(period)
        cur = proc_status(pid, 'VmRSS')
        stable = stable + 1 if abs(cur - last) <= tol else 0
        last = cur
    return last


def vmalloc_by_caller():
    """{caller function: bytes} from /proc/vmallocinfo (lazily freed
    'unpurged' areas left out)."""
    out = {}
    try:
        with open('/proc/vmallocinfo') as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[2] == 'unpurged':
                    continue
                pages = next((int(p[6:]) for p in parts[3:]
                              if p.startswith('pages=')), None)
                size = pages * 4096 if pages is not None else int(parts[1])
                caller = parts[2].split('+')[0]
                out[caller] = out.get(caller, 0) + size
    except OSError:
        pass
    return out


def caller_delta(before, after, floor=1 * MiB):
    keys = set(before) | set(after)
    d = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in d.items() if abs(v) >= floor}


def settle_vmalloc(timeout=60, tol=1 * MiB, period=0.15):
    """Wait until VmallocUsed stops moving (freeing a dead VM's memslot
    metadata takes a while after the process is gone); return it."""
    deadline = time.monotonic() + timeout
    last = vmalloc_used()
    stable = 0
    while time.monotonic() < deadline:
        time.sleep(period)
        cur = vmalloc_used()
        stable = stable + 1 if abs(cur - last) <= tol else 0
        last = cur
        if stable >= 2:
            break
    return last


def kvm_usable():
    """(ok, why): can we open /dev/kvm and start a paused VM?
    BENCH_NO_KVM=1 pretends we cannot (to try the skip paths)."""
    if os.environ.get('BENCH_NO_KVM'):
        return False, 'BENCH_NO_KVM is set'
    if not os.path.exists('/dev/kvm'):
        return False, '/dev/kvm does not exist'
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        return False, '/dev/kvm is not accessible (permissions)'
    try:
        wait_binary(PATCHED)
        with VM(PATCHED, ['-accel', 'kvm', '-S'] + KVM_CPU +
                ['-machine', 'q35', '-m', '256M']) as vm:
            vm.qmp('query-status')
            kvm = vm.qmp('query-kvm')
            if not kvm.get('enabled'):
                return False, 'QEMU says KVM is not enabled'
    except VMStartError as exc:
        return False, f'a paused KVM VM does not start: {exc.short()}'
    return True, ''


# -- launching QEMU ------------------------------------------------------------

class VMStartError(Exception):
    def __init__(self, message, log=''):
        super().__init__(message)
        self.log = log

    def short(self):
        """QEMU's own error line(s), without warnings."""
        lines = [ln.strip() for ln in self.log.splitlines()
                 if ln.strip() and 'warning:' not in ln and
                 not ln.startswith('[I ')]     # qtest's own log lines
        return '; '.join(dict.fromkeys(lines)) or str(self)


class _Machine(QEMUMachine):
    """QEMUMachine plus an optional qtest socket that does not force
    '-accel qtest' (so it can sit beside '-accel kvm -S')."""

    def __init__(self, *args, qtest_path=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.qtest_path = qtest_path
        self.qt = None

    @property
    def _base_args(self):
        args = super()._base_args
        if self.qtest_path:
            args += ['-qtest', f'unix:path={self.qtest_path}']
        return args

    def _pre_launch(self):
        super()._pre_launch()
        if self.qtest_path:
            self.qt = Qtest(self.qtest_path)

    def _post_launch(self):
        super()._post_launch()
        if self.qt:
            self.qt.accept()

    def _post_shutdown(self):
        if self.qt:
            self.qt.close()
        super()._post_shutdown()


class VM:
    """One QEMU; `with VM(binary, args) as vm:` launches it and always kills
    it (SIGKILL to its PID) on exit.  vm.start_seconds: exec -> QMP ready."""

    def __init__(self, binary, args, qtest=False, timeout=300):
        self.binary = binary
        self.args = list(args)
        self.workdir = tempfile.mkdtemp(prefix='bench-')
        self.start_seconds = None
        self.m = _Machine(binary, args=self.args, base_temp_dir=self.workdir,
                          log_dir=self.workdir, qmp_timer=timeout,
                          qtest_path=(os.path.join(self.workdir, 'qtest.sock')
                                      if qtest else None))

    def __enter__(self):
        t0 = time.monotonic()
        try:
            self.m.launch()
        except Exception as exc:   # pylint: disable=broad-except
            log = self.m.get_log() or ''
            self.close()
            raise VMStartError(f'{type(exc).__name__}: '
                               f'{str(exc).splitlines()[0] if str(exc) else ""}',
                               log) from exc
        self.start_seconds = time.monotonic() - t0
        return self

    @property
    def qt(self):
        return self.m.qt

    @property
    def pid(self):
        # pylint: disable=protected-access
        return self.m._popen.pid if self.m._popen else None

    def qmp(self, cmd, **args):
        reply = self.m.qmp(cmd, args_dict=args)
        if 'error' in reply:
            raise RuntimeError(f'QMP {cmd}: {reply["error"].get("desc")}')
        return reply.get('return')

    def close(self):
        # pylint: disable=protected-access
        popen = self.m._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            try:
                popen.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.m.shutdown(hard=True)
        except Exception:   # pylint: disable=broad-except
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *exc):
        self.close()
        return False


def machine_args(cfg, accel, ram_gib=1, dev_size=0, requested=0, extra=(),
                 backend='memory-backend-ram', props=''):
    """QEMU arguments: q35, `ram_gib` of boot RAM, and (dev_size > 0) one
    virtio-mem-pci of dev_size bytes with cfg's dynamic-memslots setting
    (plus `props`, e.g. 'memslot-size=1G') on a `backend` object."""
    maxmem = ram_gib * GiB + dev_size
    args = ['-machine', 'q35', '-nodefaults'] + cfg.fw_args
    if accel == 'kvm':
        args += ['-accel', 'kvm', '-S'] + KVM_CPU
    elif accel == 'tcg-paused':
        args += ['-accel', 'tcg', '-S', '-cpu', 'qemu64,phys-bits=48']
    else:       # TCG and qtest: enough address bits for 16 TiB devices
        args += ['-accel', accel, '-cpu', 'qemu64,phys-bits=48']
    if dev_size:
        args += ['-m', f'{ram_gib}G,maxmem={maxmem // MiB}M',
                 '-object',
                 f'{backend},id=mem0,size={dev_size // MiB}M,reserve=off',
                 '-device', f'virtio-mem-pci,id=vmem0,memdev=mem0,'
                 f'requested-size={requested},{cfg.vmem_props()}'
                 + (f',{props}' if props else '')]
    elif ram_gib > 1:
        # Large boot RAM: a backend without swap reservation (like the
        # device's), so that 65 GiB on a 24 GiB host can be created.
        args += ['-m', f'{ram_gib}G', '-machine', 'memory-backend=ram0',
                 '-object', f'memory-backend-ram,id=ram0,size={ram_gib}G,'
                 'reserve=off']
    else:
        args += ['-m', f'{ram_gib}G']
    return args + list(extra)


class StreamSink:
    """A unix socket for `migrate unix:PATH`: a thread reads the stream and
    counts its bytes (nothing is stored).  sink.uri for QMP migrate;
    sink.wait() once the migration ended, then sink.count."""

    def __init__(self, path):
        self.path, self.uri, self.count = path, 'unix:' + path, 0
        self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lsock.bind(path)
        self._lsock.listen(1)
        self._eof = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            conn, _ = self._lsock.accept()
        except OSError:             # closed before QEMU connected
            return
        buf = bytearray(4 * MiB)
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                self.count += n
        self._eof.set()

    def wait(self, timeout=60):
        """True once QEMU closed the stream."""
        return self._eof.wait(timeout)

    def close(self):
        self._lsock.close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# -- statistics ------------------------------------------------------------------

def summary(values):
    """{'median','min','max','n'} of the numbers in values (None if empty)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {'median': statistics.median(vals), 'min': min(vals),
            'max': max(vals), 'n': len(vals)}


def fmt_bytes(n, signed=False):
    if n is None:
        return '-'
    sign = ''
    if signed and n > 0:
        sign = '+'
    if n < 0:
        sign, n = '-', -n
    for unit, size in (('GiB', GiB), ('MiB', MiB), ('KiB', KiB)):
        if n >= size:
            v = n / size
            return f'{sign}{v:.2f} {unit}' if v < 10 else \
                f'{sign}{v:.1f} {unit}' if v < 100 else f'{sign}{v:.0f} {unit}'
    return f'{sign}{n:.0f} B'


def fmt_secs(s):
    if s is None:
        return '-'
    if s < 1e-3:
        return f'{s * 1e6:.0f} µs'
    if s < 1:
        return f'{s * 1e3:.1f} ms' if s < 0.1 else f'{s * 1e3:.0f} ms'
    return f'{s:.2f} s'


def fmt_size(n):
    return f'{n // TiB} TiB' if n >= TiB and n % TiB == 0 else f'{n // GiB} GiB'
