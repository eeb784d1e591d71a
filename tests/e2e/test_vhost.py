"""Real-guest tests 9: virtio-mem with dynamic memslots beside vhost-user
backends, the project's own qemu-storage-daemon (vhost-user-blk export) and
virtiofsd, built with the series' libvhost-user (509 memory regions, each
mapped from its own offset in the memory backend's file), and Debian's stock
qemu-storage-daemon and virtiofsd (32 regions).

The guest's /bin/dio (tests/e2e/guest/dio.c) writes and reads a pattern with
O_DIRECT from a buffer whose every page it checks to lie in the device's
memory (ZONE_MOVABLE: memhp_default_state=online_movable), so that the
backends read and write the hot-plugged memory itself.  The host then checks
the disk image and the shared file against the same pattern.
"""

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time

from e2elib import (GiB, MiB, TiB, MACHINE, ROOT, Failure, Skip, test,
                    device_info, set_requested, settle, zoneinfo, fmt,
                    online_blocks)

OWN_QSD = os.environ.get('QSD_BINARY') or os.path.join(
    ROOT, 'build', 'bin', 'qemu-storage-daemon')
OWN_VIRTIOFSD = os.environ.get('VIRTIOFSD_BINARY') or os.path.join(
    ROOT, 'build', 'bin', 'virtiofsd')
STOCK_QSD = os.environ.get('STOCK_QSD') or os.path.join(
    ROOT, 'build', 'peers', 'stock-7.2', 'usr', 'bin', 'qemu-storage-daemon')

CPU = ['-cpu', 'qemu64,phys-bits=48']
DISK_SIZE = 512 * MiB
PAGE = 4096

WARN_RE = re.compile(r"warning: virtio-mem-pci 'vmem0' uses 1 memslot "
                     r"instead of (\d+): the vhost-user backend on chardev "
                     r"'(\w+)' supports only (\d+) memslots")


def pattern(seed, first_page, pages):
    """The bytes dio writes for `pages` pages from page `first_page`."""
    out = bytearray()
    for p in range(first_page, first_page + pages):
        out += struct.pack('<QQ', seed, p)
        out += bytes([(seed + p) & 0xff]) * (PAGE - 16)
    return bytes(out)


def check_host_copy(t, path, offset, size, seed, what):
    with open(path, 'rb') as f:
        f.seek(offset)
        data = f.read(size)
    if data != pattern(seed, offset // PAGE, size // PAGE):
        bad = next(i for i in range(0, size, PAGE)
                   if data[i:i + PAGE] != pattern(seed, (offset + i) // PAGE,
                                                  1))
        raise Failure(f'{what}: the host copy differs from what the guest '
                      f'wrote, first at page {bad // PAGE} of {size // PAGE}')
    t.log(f'{what}: host copy matches ({fmt(size)} at {fmt(offset)})')


class Backend:
    """A vhost-user backend process on a unix socket."""

    def __init__(self, t, name, argv, sock):
        self.name, self.sock = name, sock
        self.log = sock + '.log'
        with open(self.log, 'w') as log:
            self.proc = subprocess.Popen(argv, stdout=log,  # pylint: disable=R1732
                                         stderr=subprocess.STDOUT)
        t.cleanups.append(self.stop)
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Failure(f'{name} did not create {sock}: '
                              f'{self.output()}')
            time.sleep(0.05)
        t.log(f'{name}: pid {self.proc.pid} ({" ".join(argv[:1])})')

    def output(self):
        with open(self.log, encoding='utf-8', errors='replace') as f:
            return f.read()[-2000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def maps(self, inode):
        """(file offset, size) of this process's mappings of the memfd with
        `inode` (see memfd_inode())."""
        return file_maps(self.proc.pid, inode)

    def vm_kib(self, field):
        with open(f'/proc/{self.proc.pid}/status', encoding='utf-8') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
        return 0


def file_maps(pid, inode):
    """(file offset, size) of process `pid`'s mappings of memfd `inode`."""
    res = []
    with open(f'/proc/{pid}/maps', encoding='utf-8') as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and '/memfd:' in fields[5] and \
                    int(fields[4]) == inode:
                lo, hi = (int(x, 16) for x in fields[0].split('-'))
                res.append((int(fields[2], 16), hi - lo))
    return sorted(res)


def memfd_inode(vm, size):
    """The inode of QEMU's memfd of `size` bytes (the one QEMU maps whole:
    all memory-backend-memfd files have the same name)."""
    found = set()
    with open(f'/proc/{vm.pid}/maps', encoding='utf-8') as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and '/memfd:' in fields[5]:
                lo, hi = (int(x, 16) for x in fields[0].split('-'))
                if hi - lo == size and int(fields[2], 16) == 0:
                    found.add(int(fields[4]))
    if len(found) != 1:
        raise vm.error(f'QEMU maps {len(found)} memfds of {size} bytes')
    return found.pop()


def qsd(t, binary, workdir, name='qsd'):
    img = os.path.join(workdir, f'{name}.img')
    with open(img, 'wb') as f:
        f.truncate(DISK_SIZE)
    sock = os.path.join(workdir, f'{name}.sock')
    b = Backend(t, name, [binary,
                          '--blockdev', f'driver=file,node-name=f0,'
                                        f'filename={img}',
                          '--export', f'type=vhost-user-blk,id=e0,'
                                      f'node-name=f0,writable=on,'
                                      f'addr.type=unix,addr.path={sock}'],
                sock)
    b.img = img
    return b


def virtiofsd(t, workdir, binary=None):
    shared = os.path.join(workdir, 'shared')
    os.mkdir(shared)
    sock = os.path.join(workdir, 'vfs.sock')
    b = Backend(t, 'virtiofsd', [binary or OWN_VIRTIOFSD,
                                 f'--socket-path={sock}',
                                 '-o', f'source={shared}', '-o', 'cache=none',
                                 '-o', 'sandbox=chroot'], sock)
    b.dir = shared
    return b


def workdir_for(t):
    d = tempfile.mkdtemp(prefix='e2e-vhost-')
    t.cleanups.append(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def memfd_args(mid, size):
    return ['-object', f'memory-backend-memfd,id={mid},size={size},share=on']


def vmem(extra=''):
    return ['-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,requested-size=0,'
                       'dynamic-memslots=on' + extra]


def blk_args(b):
    return ['-chardev', f'socket,id=blk0,path={b.sock}',
            '-device', 'vhost-user-blk-pci,id=vub0,chardev=blk0,num-queues=1']


def fs_args(b):
    return ['-chardev', f'socket,id=fs0,path={b.sock}',
            '-device', 'vhost-user-fs-pci,id=vfs0,chardev=fs0,tag=hostfs']


def guest_vm(t, size, vhost, device_first, extra='', launch=True):
    """A guest with boot memory and the device as shared memfds, the vhost
    devices `vhost` (a list of args) before or after the device."""
    dev = memfd_args('mem0', size) + vmem(extra)
    args = CPU + memfd_args('ram0', '1G') + \
        (dev + vhost if device_first else vhost + dev)
    return t.vm(memory='1G', maxmem=f'{1 + parse_g(size)}G',
                machine=f'{MACHINE},memory-backend=ram0',
                extra_args=args, launch=launch)


def parse_g(size):
    return {'T': 1024, 'G': 1}[size[-1]] * int(size[:-1])


def movable_check(t, vm, base, plugged):
    """The plugged memory of the device [base, base + plugged) is online
    in ZONE_MOVABLE: each of its memory blocks says so in valid_zones."""
    bs, online = online_blocks(vm)
    blocks = [b for b in online if base // bs <= b < (base + plugged) // bs]
    t.eq(len(blocks) * bs, plugged, 'online memory blocks of the device')
    _, out = vm.run('for b in ' + ' '.join(str(b) for b in blocks) +
                    '; do cat /sys/devices/system/memory/memory$b/'
                    'valid_zones; done', check=True)
    zones = sorted(set(out.split()))
    t.eq(zones, ['Movable'], 'zones of the device\'s memory blocks')
    mov = zoneinfo(vm).get('Movable', {})
    t.check(mov.get('managed', 0) > 0, f'the guest\'s Movable zone: {mov}')


def dio(t, vm, op, path, offset, mib, seed, lo, hi, split=None):
    cmd = f'dio {op} {path} {offset} {mib} {seed} {lo:#x} {hi:#x}'
    if split is not None:
        cmd += f' {split:#x}'
    rc, out = vm.run(cmd, timeout=300)
    if rc != 0:
        raise vm.error(f'{cmd}: exit {rc}: {out.strip()}')
    t.log(out.strip())
    m = re.search(r'(\d+) below and (\d+) above', out)
    return int(m.group(1)), int(m.group(2))


def mount_virtiofs(vm):
    vm.run("grep -q ' /mnt/fs ' /proc/mounts || (mkdir -p /mnt/fs && "
           "mount -t virtiofs hostfs /mnt/fs)", check=True)


def io_round(t, vm, blk, fs, base, plugged, seed):
    """Write through both backends from hot-plugged memory, drop caches, read
    back into hot-plugged memory, compare with the host's copies."""
    lo, hi = base, base + plugged
    mib = 64
    off = (seed % 4) * 64 * MiB
    dio(t, vm, 'write', '/dev/vda', off, mib, seed, lo, hi)
    check_host_copy(t, blk.img, off, mib * MiB, seed,
                    f'vhost-user-blk seed {seed}')
    vm.run('sync; echo 3 > /proc/sys/vm/drop_caches', check=True)
    dio(t, vm, 'read', '/dev/vda', off, mib, seed, lo, hi)

    mount_virtiofs(vm)
    vm.run(f'rm -f /mnt/fs/f{seed} && truncate -s {off + mib * MiB} '
           f'/mnt/fs/f{seed}', check=True)
    dio(t, vm, 'write', f'/mnt/fs/f{seed}', off, mib, seed, lo, hi)
    check_host_copy(t, os.path.join(fs.dir, f'f{seed}'), off, mib * MiB,
                    seed, f'virtiofs seed {seed}')
    vm.run('sync; echo 3 > /proc/sys/vm/drop_caches', check=True)
    dio(t, vm, 'read', f'/mnt/fs/f{seed}', off, mib, seed, lo, hi)


def own_backends_or_skip():
    for path in (OWN_QSD, OWN_VIRTIOFSD):
        if not os.access(path, os.X_OK):
            raise Skip(f'{path} is missing: run make')


def io_test(t, device_first):
    own_backends_or_skip()
    wd = workdir_for(t)
    blk, fs = qsd(t, OWN_QSD, wd), virtiofsd(t, wd)
    vm = guest_vm(t, '1T', blk_args(blk) + fs_args(fs), device_first)
    out = vm.qemu_output()
    t.check('warning' not in out, f'no warning at start-up: {out!r}')
    info = device_info(vm, 'vmem0')
    # as without vhost: 256 memslots of 4 GiB (design: 1 TiB device)
    t.eq(info['memslots'], 256, 'memslots of the 1 TiB device')
    t.eq(info['memslot-size'], 4 * GiB, 'memslot-size')
    base = info['memaddr']
    ino = memfd_inode(vm, 1 * TiB)
    for rnd, seed in enumerate((11, 12)):
        set_requested(vm, 'vmem0', 1 * GiB)
        settle(vm, 'vmem0', 1 * GiB)
        movable_check(t, vm, base, 1 * GiB)
        for b in (blk, fs):
            t.eq(b.maps(ino), [(0, 4 * GiB)], f'{b.name}: (offset, size) of '
                 'its mappings of the device memory (memslot 0 mapped)')
        io_round(t, vm, blk, fs, base, 1 * GiB, seed)
        # unplug all, then plug again (next round)
        set_requested(vm, 'vmem0', 0)
        settle(vm, 'vmem0', 0)
        for b in (blk, fs):
            t.eq(b.maps(ino), [], f'round {rnd}: {b.name}: mappings of the '
                 'device memory after unplugging all')
    t.log(f'qemu-storage-daemon VmSize {fmt(blk.vm_kib("VmSize"))}, '
          f'VmRSS {fmt(blk.vm_kib("VmRSS"))}')


@test('9a-vhost-own-backends-io-device-first')
def t9a(t):
    io_test(t, True)


@test('9b-vhost-own-backends-io-vhost-first')
def t9b(t):
    io_test(t, False)


@test('9c-vhost-io-buffer-across-two-memslots')
def t9c(t):
    """memslot-size=128M: a buffer of 192 MiB in 256 MiB plugged has pages
    in memslots 0 and 1, which the backends hold as two regions."""
    own_backends_or_skip()
    wd = workdir_for(t)
    blk, fs = qsd(t, OWN_QSD, wd), virtiofsd(t, wd)
    vm = guest_vm(t, '8G', blk_args(blk) + fs_args(fs), True,
                  extra=',memslot-size=128M')
    info = device_info(vm, 'vmem0')
    t.eq(info['memslots'], 64, 'memslots')
    base = info['memaddr']
    set_requested(vm, 'vmem0', 256 * MiB)
    settle(vm, 'vmem0', 256 * MiB)
    movable_check(t, vm, base, 256 * MiB)
    # the guest's 192 MiB buffer of 256 MiB plugged must use both memslots
    below, above = dio(t, vm, 'write', '/dev/vda', 0, 192, 21, base,
                       base + 256 * MiB, base + 128 * MiB)
    t.check(below > 0 and above > 0, f'the buffer has pages in memslot 0 '
            f'({below}) and memslot 1 ({above})')
    check_host_copy(t, blk.img, 0, 192 * MiB, 21, 'vhost-user-blk')
    ino = memfd_inode(vm, 8 * GiB)
    for b in (blk, fs):
        # one mapping per mapped memslot, from the memslot's offset
        t.eq(b.maps(ino), [(0, 128 * MiB), (128 * MiB, 128 * MiB)],
             f'{b.name}: (offset, size) of its mappings of the device memory')
    vm.run('sync; echo 3 > /proc/sys/vm/drop_caches', check=True)
    dio(t, vm, 'read', '/dev/vda', 0, 192, 21, base, base + 256 * MiB)

    mount_virtiofs(vm)
    vm.run('truncate -s 192M /mnt/fs/f22', check=True)
    below, above = dio(t, vm, 'write', '/mnt/fs/f22', 0, 192, 22, base,
                       base + 256 * MiB, base + 128 * MiB)
    t.check(below > 0 and above > 0, f'the virtiofs buffer has pages in '
            f'memslot 0 ({below}) and memslot 1 ({above})')
    check_host_copy(t, os.path.join(fs.dir, 'f22'), 0, 192 * MiB, 22,
                    'virtiofs')
    vm.run('sync; echo 3 > /proc/sys/vm/drop_caches', check=True)
    dio(t, vm, 'read', '/mnt/fs/f22', 0, 192, 22, base, base + 256 * MiB)


STOCK_VIRTIOFSD = os.environ.get('STOCK_VIRTIOFSD') or os.path.join(
    ROOT, 'build', 'peers', 'stock-7.2', 'usr', 'lib', 'qemu', 'virtiofsd')


def probe_slots(b):
    """The backend's answer to VHOST_USER_GET_MAX_MEM_SLOTS."""
    out = subprocess.run([os.path.join(ROOT, 'scripts', 'vhost-user-slots.py'),
                          b.sock], capture_output=True, text=True, timeout=30,
                         check=False)
    if out.returncode != 0:
        raise Failure(f'vhost-user-slots.py {b.sock}: {out.stderr.strip()}')
    return int(out.stdout)


@test('9d-vhost-stock-backends-32-slots-both-orders')
def t9d(t):
    """Debian's stock qemu-storage-daemon and virtiofsd (libvhost-user of
    7.2: 32 memory regions): the VM starts in either order, the device gets
    one memslot, with one warning naming the backend; ours answer 509."""
    for path in (STOCK_QSD, STOCK_VIRTIOFSD):
        if not os.access(path, os.X_OK):
            raise Skip(f'{path} is missing: run scripts/fetch-stock-qemu.sh')
    own_backends_or_skip()
    wd = workdir_for(t)
    for name, make, want in (
            ('stock qemu-storage-daemon', lambda d: qsd(t, STOCK_QSD, d,
                                                        'stock-qsd'), 32),
            ('stock virtiofsd', lambda d: virtiofsd(t, d, STOCK_VIRTIOFSD),
             32),
            ('our qemu-storage-daemon', lambda d: qsd(t, OWN_QSD, d), 509),
            ('our virtiofsd', lambda d: virtiofsd(t, d), 509)):
        d = tempfile.mkdtemp(dir=wd)
        b = make(d)
        got = probe_slots(b)
        t.log(f'{name}: VHOST_USER_GET_MAX_MEM_SLOTS -> {got}')
        t.eq(got, want, f'{name}: memory regions it accepts')
        b.stop()
    for kind in ('qsd', 'virtiofsd'):
        for device_first in (True, False):
            d = tempfile.mkdtemp(dir=wd)
            if kind == 'qsd':
                b = qsd(t, STOCK_QSD, d, name='stock-qsd')
                vhost, chardev = blk_args(b), 'blk0'
            else:
                b = virtiofsd(t, d, STOCK_VIRTIOFSD)
                vhost, chardev = fs_args(b), 'fs0'
            dev = memfd_args('mem0', '1T') + vmem()
            vm = t.vm(memory='1G', maxmem='1025G', wait=False,
                      machine=f'{MACHINE},memory-backend=ram0',
                      extra_args=CPU + ['-S'] + memfd_args('ram0', '1G')
                      + (dev + vhost if device_first else vhost + dev))
            info = device_info(vm, 'vmem0')
            out = vm.qemu_output()
            order = 'device first' if device_first else 'vhost first'
            t.log(f'stock {kind}, {order}: memslots {info["memslots"]}; '
                  f'{out.strip()!r}')
            t.eq(info['memslots'], 1, f'stock {kind}, {order}: memslots')
            t.eq(WARN_RE.findall(out), [('256', chardev, '32')],
                 f'stock {kind}, {order}: warnings')
            t.kill(vm)
            b.stop()
