"""Helpers for the real-guest end-to-end suite, and its hooks into the shared
runner (tests/lib/suite.py): the VM handover between tests, GuestVM's
error context.

Each test is a function taking a TestCtx `t`, registered with @test(name).
VMs are started through t.vm(...) so that the runner can print their QEMU
command line, QMP exchange, QEMU output and guest console tail when a step
fails, and can kill every QEMU the test started (by PID) when it ends.
"""

import hashlib
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'lib'))

import suite  # noqa: E402  pylint: disable=C0413
from suite import Failure, Skip, pid_alive  # noqa: E402,F401  pylint: disable=C0413
from vmguest import (GuestVM, VMError, merge_ranges,  # noqa: E402,F401  pylint: disable=C0413
                     host_cpu_vendor)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

MACHINE = 'pc-q35-7.2'
PATCHED = os.environ.get('QEMU_BINARY') or os.path.join(
    ROOT, 'build', 'bin', 'qemu-system-x86_64')
STOCK = os.environ.get('STOCK_QEMU') or os.path.join(
    ROOT, 'build', 'peers', 'stock-7.2', 'usr', 'bin', 'qemu-system-x86_64')

# The error text the spec requires (section 2).
ERR_NEEDS_INACCESSIBLE = ("'dynamic-memslots' property set to 'on' requires "
                          "'unplugged-inaccessible' to be 'on'")


def fmt(n):
    """Bytes for humans."""
    neg = n < 0
    n = abs(n)
    for unit, size in (('GiB', GiB), ('MiB', MiB), ('KiB', KiB)):
        if n >= size:
            v = n / size
            s = f'{v:.0f} {unit}' if v == int(v) else f'{v:.2f} {unit}'
            return ('-' if neg else '') + s
    return ('-' if neg else '') + f'{n} B'


def wait_for_binary(path, timeout=300):
    """The patched binary may be briefly missing while it is rebuilt."""
    deadline = time.monotonic() + timeout
    while not os.access(path, os.X_OK):
        if time.monotonic() > deadline:
            raise Failure(f'{path} is missing (waited {timeout}s)')
        time.sleep(2)


# -- the runner -------------------------------------------------------------

HANDOVER = {}   # key -> (GuestVM, state): running VMs passed between tests


class TestCtx(suite.Ctx):
    """Per-test state: its VMs, findings (the notes) and a log."""

    def __init__(self, name):
        super().__init__(name)
        self._handed = {}
        self.cleanups = []      # called (last first) after the test's VMs

    def note(self, msg):
        """A finding worth repeating in the final summary."""
        self.notes.append(msg)
        self.log('NOTE: ' + msg)

    def vm(self, binary=None, launch=True, wait=None, **kw):
        """Create (and by default launch and boot) a GuestVM owned by the
        test.  wait: wait for the guest's ready marker (default: unless
        incoming).  Extra keyword arguments go to GuestVM."""
        binary = binary or PATCHED
        wait_for_binary(binary)
        kw.setdefault('machine', MACHINE)
        kw.setdefault('name', f'vm{len(self.vms)}')
        vm = GuestVM(binary=binary, **kw)
        self.vms.append(vm)
        if launch:
            vm.launch(wait=(not kw.get('incoming')) if wait is None
                      else wait)
            if vm.pid:
                self.log(f'{vm.name}: QEMU pid {vm.pid} '
                         f'({os.path.relpath(binary, ROOT)})'
                         + (f', booted in {vm.boot_seconds:.1f}s'
                            if vm.boot_seconds else ''))
        return vm

    def kill(self, vm):
        """Shut one VM down now (by PID) and check its process is gone."""
        pid = vm.pid
        vm.shutdown()
        if pid and pid_alive(pid):
            raise Failure(f'QEMU pid {pid} still alive after shutdown')

    def handover(self, key, vm, state):
        """Pass a running VM (and some state) on to a later test, which
        takes it with take(key).  Only if this test passes; the runner kills
        VMs nobody took at the end of the run."""
        self.vms.remove(vm)
        self._handed[key] = (vm, state)

    def take(self, key):
        """(vm, state) handed over under `key` by an earlier test, or
        (None, None).  The VM then belongs to this test."""
        vm, state = HANDOVER.pop(key, (None, None))
        if vm is not None:
            self.vms.append(vm)
        return vm, state

    def eq(self, got, want, what):
        if got != want:
            raise Failure(f'{what}: got {got!r}, want {want!r}')


class E2ESuite(suite.Suite):
    def header(self, n):
        return f'e2e: {n} tests; patched QEMU {PATCHED}; stock peer {STOCK}'

    def message(self, exc):
        return exc.message if isinstance(exc, VMError) else str(exc)

    def print_vm(self, vm):
        """Its QEMU command line, QMP exchange, QEMU output, console."""
        if vm.pid is None:
            print(f'    ==== {vm.name}: not launched; command line:\n'
                  f'      {vm.cmdline}')
            return
        print(f'    ==== {vm.name} (pid {vm.pid}) ====')
        for line in vm.error('context', qmp_entries=30).context.splitlines():
            if len(line) > 600:
                line = line[:600] + f' ...[{len(line) - 600} more]'
            print('    ' + line)

    def interrupted(self, t):
        t.vms += [vm for vm, _ in HANDOVER.values()]
        super().interrupted(t)

    def after(self, t, status):
        # pylint: disable=protected-access
        if status == 'PASS':
            HANDOVER.update(t._handed)
        else:
            t.vms += [vm for vm, _ in t._handed.values()]

    def cleanup(self, t):
        """The test's other processes (vhost-user backends) and files."""
        while t.cleanups:
            fn = t.cleanups.pop()
            try:
                fn()
            except Exception as exc:  # pylint: disable=broad-except
                print(f'    cleanup {fn} failed: {exc}')

    def finish(self, results):
        """Kill the VMs handed over that no test took."""
        for key, (vm, _) in list(HANDOVER.items()):
            pid = vm.pid
            vm.shutdown()
            if pid and pid_alive(pid):
                print(f'cleanup: QEMU pid {pid} ({key}) still alive')
                results.append((f'cleanup {key}', 'FAIL', 0, 'QEMU alive',
                                []))
            del HANDOVER[key]


SUITE = E2ESuite(HERE, TestCtx, 'findings')
test = SUITE.test
run_tests = SUITE.run


# -- device and guest helpers ----------------------------------------------

def memdev_args(mid, size, extra=''):
    return ['-object', f'memory-backend-ram,id={mid},size={size},'
                       f'reserve=off{extra}']


def vmem_args(vid, mid, dynamic, requested=0, extra=''):
    """-device virtio-mem-pci ...; dynamic None = no dynamic-memslots
    property at all (what the stock binary gets)."""
    dev = (f'virtio-mem-pci,id={vid},memdev={mid},requested-size={requested},'
           f'unplugged-inaccessible=on')
    if dynamic is not None:
        dev += f',dynamic-memslots={"on" if dynamic else "off"}'
    return ['-device', dev + extra]


def device_info(vm, vid):
    for dev in vm.qmp('query-memory-devices'):
        if dev['type'] == 'virtio-mem' and dev['data'].get('id') == vid:
            return dev['data']
    raise vm.error(f'query-memory-devices does not list {vid}')


def set_requested(vm, vid, size):
    vm.qmp('qom-set', path=f'/machine/peripheral/{vid}',
           property='requested-size', value=size)


_IOMEM_RE = re.compile(r'^(\s*)([0-9a-f]+)-([0-9a-f]+) : (.*)$')


def iomem(vm):
    """The guest's /proc/iomem: list of (depth, start, end, name)."""
    _, out = vm.run('cat /proc/iomem', check=True)
    res = []
    for line in out.splitlines():
        m = _IOMEM_RE.match(line)
        if m:
            res.append((len(m.group(1)) // 2, int(m.group(2), 16),
                        int(m.group(3), 16), m.group(4)))
    return res


def device_ram(vm, base, size, iomem_list=None):
    """Merged 'System RAM' ranges of the guest inside [base, base+size)."""
    entries = iomem(vm) if iomem_list is None else iomem_list
    rs = [(s, e) for _, s, e, n in entries
          if n.startswith('System RAM') and s >= base and e < base + size]
    return merge_ranges(rs)


def ranges_size(ranges):
    return sum(e - s + 1 for s, e in ranges)


def online_blocks(vm):
    """(block size, sorted list of online memory block numbers)."""
    _, out = vm.run('cat /sys/devices/system/memory/block_size_bytes; '
                    'grep -H . /sys/devices/system/memory/memory*/online',
                    check=True)
    lines = out.split()
    bs = int(lines[0], 16)
    online = []
    for line in lines[1:]:
        m = re.search(r'memory(\d+)/online:(\d)', line)
        if m and m.group(2) == '1':
            online.append(int(m.group(1)))
    return bs, sorted(online)


def zoneinfo(vm):
    """{zone: {'managed': pages, 'free': pages, 'start_pfn': pfn, ...}}."""
    _, out = vm.run('cat /proc/zoneinfo', check=True)
    zones, cur = {}, None
    for line in out.splitlines():
        m = re.match(r'^Node \d+, zone\s+(\S+)', line)
        if m:
            cur = zones.setdefault(m.group(1), {})
            continue
        if cur is None:
            continue
        f = line.split()
        if len(f) >= 2 and f[0] in ('present', 'managed', 'spanned'):
            cur[f[0]] = int(f[1])
        elif len(f) >= 2 and f[0] == 'nr_free_pages':
            cur['free'] = int(f[1])
        elif f and f[0] == 'start_pfn:':
            cur['start_pfn'] = int(f[1])
    return zones


def wait_size(vm, vid, want, timeout=120):
    """Wait until query-memory-devices reports size == want.  Fails only
    when the size has not come closer to `want` for `timeout` seconds of
    guest run time (vm.deadline: a loaded host does not count)."""
    dl = vm.deadline(timeout)
    info = device_info(vm, vid)
    while info['size'] != want:
        if dl.expired():
            raise vm.error(f'{vid} size is {fmt(info["size"])}, requested '
                           f'{fmt(want)}: no progress for {dl}')
        time.sleep(0.2)
        new = device_info(vm, vid)
        if abs(new['size'] - want) < abs(info['size'] - want):
            dl = vm.deadline(timeout)
        info = new
    return info


def settle(vm, vid, want, timeout=120):
    """Wait until the device's size is `want` and the guest has all of it
    (and no more) online as System RAM in the device's range, and MemTotal
    is stable.  Returns a dict of what the guest and QEMU show.

    Waits on progress: fails only when neither the device's size nor the
    guest's System RAM in the device range nor MemTotal changed for
    `timeout` seconds of guest run time (a loaded host does not count)."""
    info = wait_size(vm, vid, want, timeout)
    base, maxsize = info['memaddr'], info['max-size']
    dl = vm.deadline(timeout)
    last = None
    while True:
        ranges = device_ram(vm, base, maxsize)
        memtotal = vm.meminfo('MemTotal')
        state = (tuple(ranges), memtotal)
        if ranges_size(ranges) == want and state == last:
            break
        if state != last and last is not None:
            dl = vm.deadline(timeout)
        if dl.expired():
            raise vm.error(
                f'guest has {fmt(ranges_size(ranges))} of {vid} as System '
                f'RAM, device size {fmt(want)}, no change for {dl}: '
                f'{ranges}')
        last = state
        time.sleep(0.3)
    return {'info': info, 'ranges': ranges, 'memtotal': memtotal,
            'base': base, 'maxsize': maxsize}


def expected_slots(ranges, base, slot_size):
    """Indices of the memslots of size slot_size touched by ranges."""
    idx = set()
    for s, e in ranges:
        idx.update(range((s - base) // slot_size, (e - base) // slot_size + 1))
    return sorted(idx)


def check_aliases(t, vm, memdev, base, size, slot_size, ranges, text=None):
    """Assert the mapped memslot aliases of `memdev` are exactly those
    covering the plugged ranges, with the spec's geometry (section 3)."""
    aliases = vm.mapped_memslots(memdev, text=text)
    got = sorted(a['index'] for a in aliases)
    want = expected_slots(ranges, base, slot_size)
    t.check(got == want, f'mapped memslot aliases of {memdev}: indices '
                         f'{got}, want {want} (slot size {fmt(slot_size)}, '
                         f'plugged {[(hex(s), hex(e)) for s, e in ranges]})')
    for a in aliases:
        i = a['index']
        off_s = i * slot_size
        off_e = min((i + 1) * slot_size, size) - 1
        t.check((a['alias_start'], a['alias_end']) == (off_s, off_e),
                f'memslot-{i} @{memdev} covers offsets '
                f'{a["alias_start"]:#x}-{a["alias_end"]:#x}, want '
                f'{off_s:#x}-{off_e:#x}')
        t.check((a['start'], a['end']) == (base + off_s, base + off_e),
                f'memslot-{i} @{memdev} mapped at {a["start"]:#x}-'
                f'{a["end"]:#x}, want {base + off_s:#x}-{base + off_e:#x}')
        t.check(a['kind'] == 'ram', f'memslot-{i} kind {a["kind"]}')
    return aliases


def direct_regions(vm, memdev, text=None):
    """Regions named `memdev` mapped directly (not via alias) in 'memory'."""
    return [r for r in vm.mtree_regions('memory', text)
            if r['name'] == memdev and 'alias' not in r]


def container_regions(vm, text=None):
    return [r for r in vm.mtree_regions('memory', text)
            if r['name'] == 'virtio-mem' and 'alias' not in r]


# -- the data pattern -------------------------------------------------------
#
# A file of `chunks` chunks, chunk i being the line "chunk <i> gen <g> <tag>"
# followed by the output of `seq 1 SEED_N` (1,038,895 bytes, so chunks do not
# line up with pages and every page differs from every other).  The guest
# builds it from /mnt/seed with shell builtins and cat; the host computes the
# same bytes' md5.

SEED_N = 150000
_SEED = ''.join(f'{i}\n' for i in range(1, SEED_N + 1)).encode()
SEED_LEN = len(_SEED)
_MD5_CACHE = {}


def pattern_md5(chunks, gen, tag='p'):
    key = (chunks, gen, tag)
    if key not in _MD5_CACHE:
        h = hashlib.md5()
        for i in range(chunks):
            h.update(f'chunk {i} gen {gen} {tag}\n'.encode())
            h.update(_SEED)
        _MD5_CACHE[key] = h.hexdigest()
    return _MD5_CACHE[key]


def pattern_size(chunks, gen, tag='p'):
    return sum(len(f'chunk {i} gen {gen} {tag}\n') + SEED_LEN
               for i in range(chunks))


def guest_mount_scratch(vm, size='8G'):
    """A tmpfs on /mnt (sized above boot RAM) with the seed file."""
    vm.run(f'mkdir -p /mnt && (mountpoint -q /mnt || mount -t tmpfs -o '
           f'size={size} tmpfs /mnt) && seq 1 {SEED_N} > /mnt/seed', check=True,
           timeout=120)
    _, out = vm.run('wc -c < /mnt/seed', check=True)
    if int(out.strip()) != SEED_LEN:
        raise vm.error(f'/mnt/seed has {out.strip()} bytes, want {SEED_LEN}')


def pattern_cmd(path, chunks, gen, tag='p'):
    return (f'i=0; while [ $i -lt {chunks} ]; do echo "chunk $i gen {gen} '
            f'{tag}"; cat /mnt/seed; i=$((i+1)); done > {path}')


def guest_write_pattern(vm, path, chunks, gen=0, tag='p', timeout=300):
    vm.run(pattern_cmd(path, chunks, gen, tag), check=True, timeout=timeout)


def guest_md5(vm, path, timeout=300):
    _, out = vm.run(f'md5sum {path}', check=True, timeout=timeout)
    return out.split()[0]


def check_pattern(t, vm, path, chunks, gen=0, tag='p'):
    got = guest_md5(vm, path)
    want = pattern_md5(chunks, gen, tag)
    t.check(got == want, f'{path}: guest md5 {got}, want {want} (pattern of '
                         f'{chunks} chunks, gen {gen}, tag {tag})')
    return got


# A background writer in the guest that keeps rewriting /mnt/w with
# generation g = 1, 2, ... (chunks each) until /mnt/stop exists, publishing
# the last complete generation in /mnt/gen.  The last file is complete (each
# generation is written to /mnt/w.new and renamed).
WRITER_CHUNKS = 48


def writer_script(chunks=WRITER_CHUNKS, pause='0.2'):
    return ('g=$(cat /mnt/gen 2>/dev/null || echo 0); '
            'while [ ! -e /mnt/stop ]; do g=$((g+1)); '
            + pattern_cmd('/mnt/w.new', chunks, '$g', 'w') +
            ' && mv /mnt/w.new /mnt/w && echo $g > /mnt/gen; '
            f'sleep {pause}; done; touch /mnt/stopped')


def guest_start_writer(vm, chunks=WRITER_CHUNKS):
    vm.run('rm -f /mnt/stop /mnt/stopped', check=True)
    script = writer_script(chunks).replace("'", "'\\''")
    vm.run(f"setsid sh -c '{script}' </dev/null >/dev/null 2>&1 &",
           check=True)


def guest_writer_gen(vm):
    _, out = vm.run('cat /mnt/gen 2>/dev/null || echo 0', check=True)
    return int(out.strip() or 0)


def guest_stop_writer(t, vm, chunks=WRITER_CHUNKS, timeout=120):
    """Stop the writer, wait for it, check /mnt/w against its generation."""
    vm.run('touch /mnt/stop', check=True)
    dl = vm.deadline(timeout)
    while vm.run('test -e /mnt/stopped')[0] != 0:
        if dl.expired():
            raise vm.error(f'guest writer did not stop within {dl}')
        time.sleep(0.3)
    gen = guest_writer_gen(vm)
    t.check(gen >= 1, 'the guest writer never completed a generation')
    check_pattern(t, vm, '/mnt/w', chunks, gen, 'w')
    return gen


def memtotal_ok(delta, plugged):
    """MemTotal delta vs. plugged size: Linux counts hot-plugged memory in
    MemTotal in full (its struct pages come from boot memory) unless the
    memmap lives on the hot-plugged memory itself (memmap_on_memory, 64 B per
    4 KiB page = 1/64).  Accept exactly the plugged size, or that minus at
    most 1/64 of it."""
    return plugged - plugged // 64 <= delta <= plugged
