"""Cost test 7 (issue 19): preallocation of plugged memory (prealloc=on).

prealloc-threads: a paused VM, a 4 GiB memfd backend with
prealloc-threads=N (1 and 2) and the device with prealloc=on; the qtest
driver plugs 1 GiB in one request.  Asserts: the request is ACKed, the
backend has allocated exactly the plugged 1 GiB (with prealloc=off the same
plug allocates nothing: the preallocation is what populated it), and QEMU
started exactly N threads while it handled the request for N > 1, none for
N = 1 (counted with strace -f on the running QEMU: qemu_prealloc_mem()
starts one thread per part, but populates a single part with
MADV_POPULATE_WRITE in the calling thread; 7.2 and upstream 10.0 never
start any for virtio-mem, whatever the backend says).

prealloc-failure: the backend is a 4 GiB file on a 1 GiB tmpfs
(prealloc-threads=2), so preallocating 2 GiB fails half-way.  Asserts: the
request is answered BUSY (as 7.2 answers a failed preallocation), the
device's size stays 0, the stats count one failed preallocation, and the
file holds nothing afterwards (the populated part was given back); then a
plug of 512 MiB is ACKed and the file holds exactly 512 MiB.

prealloc-incoming: 1 GiB plugged on a source that never wrote it (memfd,
prealloc off), migrated into a destination with prealloc=on, 2 threads and
private anonymous memory (where reading an unwritten page maps the zero
page, so only a preallocation populates it).  Asserts, with
x-prealloc-incoming=on on both sides: the destination's anonymous memory
grew by the plugged 1 GiB (and at most 256 MiB more); with it off (7.2's
behaviour): by less than 256 MiB, i.e. nothing was preallocated.

prealloc-incoming-failure: the destination's backend is a file on a
512 MiB tmpfs, 1 GiB plugged, x-prealloc-incoming=on.  Asserts: the
migration fails, the destination exits saying that preallocating the
plugged bytes failed, the source stays in its run state with 1 GiB
plugged.

prealloc-incoming-postcopy: the same with postcopy-ram on both sides.
Asserts: the destination refuses (postcopy needs unreceived pages
unpopulated, so that they fault) with its reason, the migration fails, the
source keeps its 1 GiB.

prealloc-incoming-vmdesc: 1 GiB plugged, the stream written to a file
(`migrate exec:cat > FILE`) with x-prealloc-incoming on and off, then read
by the tree's scripts/analyze-migration.py, which needs every section in
the stream's device description.  Asserts: it reads both streams, the
early section is there once (with the plugged size) with on and not with
off, and the device's regular section is there in both.
"""

import glob
import json
import os
import re
import signal
import subprocess
import time

from costlib import (GiB, MiB, Backend, test, device_size, fmt_bytes,
                     migrate_to_vm, migration_caps, MACHINE, ACCEL,
                     BOOT_RAM, DEV, ROOT)
import vmemqtest as vq

SIZE = 4 * GiB
PLUG = 1 * GiB


def prealloc_args(backend_obj, size, extra=''):
    return ['-machine', MACHINE, '-nodefaults'] + ACCEL + [
        '-m', f'{BOOT_RAM // MiB}M,maxmem={(BOOT_RAM + size) // MiB}M',
        '-object', backend_obj + extra,
        '-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,requested-size=0,'
                   'unplugged-inaccessible=on,dynamic-memslots=on,'
                   'prealloc=on']


def eq(t, got, want, what):
    t.check(got == want, f'{what}: got {got!r}, want {want!r}')


def stats(vm):
    for dev in vm.qmp('query-memory-devices'):
        if dev['data'].get('id') == 'vmem0':
            return dev['data']['stats']
    raise AssertionError('no vmem0')


class Clones:
    """strace -f attached to a running QEMU, counting the threads it
    starts (clone/clone3 calls that succeed)."""

    def __init__(self, t, pid):
        self.out = os.path.join(t.tmp, f'strace-{pid}')
        # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(
            ['strace', '-f', '-qq', '-e', 'trace=clone,clone3', '-o',
             self.out, '-p', str(pid)], stderr=subprocess.PIPE)
        # strace attaches to every thread before it traces: wait for it
        # to report them all attached (it writes nothing with -qq), i.e.
        # give it a moment and check it is alive.
        time.sleep(1.0)
        if self.proc.poll() is not None:
            raise AssertionError('strace exited: '
                                 + self.proc.stderr.read().decode())

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        with open(self.out) as f:
            text = f.read()
        return len(re.findall(r'clone3?\(.*\) = [1-9]\d*$', text, re.M)), text


def plug_once(t, vm, size, count_threads=False):
    dev = vq.VirtioMem(vm.qt).init()
    vm.qmp('qom-set', path=DEV, property='requested-size', value=size)
    clones = Clones(t, vm.pid) if count_threads else None
    t0 = time.monotonic()
    resp, _ = dev.request(vq.PLUG, dev.addr, size // dev.block_size,
                          check=False)
    took = time.monotonic() - t0
    n = clones.stop() if clones else (None, '')
    return dev, resp, took, n


@test('prealloc-threads')
def t_prealloc_threads(t):
    for threads in (1, 2, None):
        be = Backend('memfd', SIZE, t.tmp)
        extra = f',prealloc-threads={threads}' if threads else ''
        args = prealloc_args(be.obj, SIZE, extra)
        if threads is None:
            args[-1] = args[-1].replace('prealloc=on', 'prealloc=off')
        vm = t.vm(args, qtest=True)
        _, resp, took, (clones, text) = plug_once(t, vm, PLUG,
                                                  count_threads=bool(threads))
        what = (f'prealloc-threads={threads}' if threads else
                'prealloc=off')
        eq(t, vq.RESP_NAMES.get(resp, resp), 'ACK', f'{what}: response')
        eq(t, device_size(vm), PLUG, f'{what}: device size')
        alloc = be.allocated(vm.pid)
        t.figure(f'{what}: plugging {fmt_bytes(PLUG)} took {took:.2f}s, '
                 f'backend allocated {fmt_bytes(alloc)}'
                 + (f', {clones} thread(s) started' if threads else ''))
        if threads:
            eq(t, alloc, PLUG, f'{what}: bytes the backend allocated')
            # One part is populated by the vCPU thread itself.
            eq(t, clones, threads if threads > 1 else 0,
               f'{what}: threads started while '
                                  f'preallocating (strace):\n{text}')
        else:
            eq(t, alloc, 0, f'{what}: bytes the backend allocated')
        t.kill(vm)


@test('prealloc-failure')
def t_prealloc_failure(t):
    if os.geteuid() != 0:
        t.skip('needs root to mount a small tmpfs')
    mnt = t.mkdtemp('/tmp')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1G', 'cost-prealloc',
                    mnt], check=True)
    vm = None
    try:
        be = Backend('file', SIZE, mnt)
        vm = t.vm(prealloc_args(be.obj, SIZE, ',prealloc-threads=2'),
                  qtest=True)
        dev, resp, took, _ = plug_once(t, vm, 2 * GiB)
        alloc = be.allocated(vm.pid)
        st = stats(vm)
        t.figure(f'2 GiB into a 1 GiB tmpfs: {vq.RESP_NAMES.get(resp, resp)} '
                 f'after {took:.2f}s; the file then holds {fmt_bytes(alloc)}; '
                 f'plug-prealloc-failed {st["plug-prealloc-failed"]}')
        eq(t, vq.RESP_NAMES.get(resp, resp), 'BUSY', 'response to the plug')
        eq(t, device_size(vm), 0, 'device size after the failed plug')
        eq(t, (st['plug-requests'], st['plug-prealloc-failed'],
              st['plug-acked']), (1, 1, 0), 'stats after the failed plug')
        eq(t, alloc, 0, 'bytes the file holds after the failed plug')
        resp, _ = dev.request(vq.PLUG, dev.addr, 512 * MiB // dev.block_size,
                              check=False)
        eq(t, vq.RESP_NAMES.get(resp, resp), 'ACK', 'response to 512 MiB')
        eq(t, device_size(vm), 512 * MiB, 'device size after 512 MiB')
        eq(t, be.allocated(vm.pid), 512 * MiB, 'bytes the file holds after '
                                              '512 MiB')
    finally:
        if vm is not None:
            t.kill(vm)
        subprocess.run(['umount', mnt], check=False)


def incoming_pair(t, src_obj, dst_obj, size, incoming):
    """A source (prealloc off, nothing touched) and a destination
    (prealloc=on, 2 threads, -incoming defer), both with
    x-prealloc-incoming=`incoming`."""
    prop = f',x-prealloc-incoming={"on" if incoming else "off"}'
    src_args = prealloc_args(src_obj, size)
    src_args[-1] = src_args[-1].replace('prealloc=on', 'prealloc=off') + prop
    dst_args = prealloc_args(dst_obj, size, ',prealloc-threads=2')
    dst_args[-1] += prop
    src = t.vm(src_args, qtest=True, name='src')
    dst = t.vm(dst_args + ['-incoming', 'defer'], name='dst')
    return src, dst


def rss_anon(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('RssAnon:'):
                return int(line.split()[1]) * 1024
    raise AssertionError(f'no RssAnon for pid {pid}')


@test('prealloc-incoming')
def t_prealloc_incoming(t):
    # The destination's backend is private anonymous memory: reading a page
    # that was never written maps the shared zero page, so only a
    # preallocation populates what the source sends as zero pages.
    for incoming in (True, False):
        what = f'x-prealloc-incoming={"on" if incoming else "off"}'
        sbe = Backend('memfd', SIZE, t.tmp)
        dbe = Backend('ram', SIZE, t.tmp)
        src, dst = incoming_pair(t, sbe.obj, dbe.obj, SIZE, incoming)
        plug_once(t, src, PLUG)
        eq(t, sbe.allocated(src.pid), 0, f'{what}: source backend bytes '
                                         '(prealloc off, nothing written)')
        before = rss_anon(dst.pid)
        r = migrate_to_vm(t, src, dst, [])
        # The source never ran (-S): the destination stays in prelaunch.
        eq(t, (r['status'], r['dst_status']), ('completed', 'prelaunch'),
           f'{what}: migration')
        eq(t, device_size(dst), PLUG, f'{what}: destination device size')
        grown = rss_anon(dst.pid) - before
        t.figure(f'{what}: {fmt_bytes(PLUG)} plugged (all zero) migrated '
                 f'in {r["seconds"]:.2f}s; the destination (prealloc=on, '
                 f'2 threads) grew by {fmt_bytes(grown)} of anonymous '
                 'memory')
        if incoming:
            t.check(PLUG <= grown < PLUG + 256 * MiB,
                    f'{what}: the destination grew by {fmt_bytes(grown)}, '
                    f'want the plugged {fmt_bytes(PLUG)}')
        else:
            # 7.2's behaviour: zero pages are not written, and nothing
            # preallocates the plugged memory on the destination.
            t.check(grown < 256 * MiB, f'{what}: the destination grew by '
                                       f'{fmt_bytes(grown)}')
        t.kill(src)
        t.kill(dst)


@test('prealloc-incoming-failure')
def t_prealloc_incoming_failure(t):
    if os.geteuid() != 0:
        t.skip('needs root to mount a small tmpfs')
    mnt = t.mkdtemp('/tmp')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=512M',
                    'cost-prealloc', mnt], check=True)
    src = dst = None
    try:
        sbe = Backend('memfd', SIZE, t.tmp)
        dbe = Backend('file', SIZE, mnt)
        src, dst = incoming_pair(t, sbe.obj, dbe.obj, SIZE, True)
        plug_once(t, src, PLUG)
        before = src.qmp('query-status')['status']
        r = migrate_to_vm(t, src, dst, [])
        t.figure(f'1 GiB plugged into a destination on a 512 MiB tmpfs: '
                 f'source {r["status"]}, destination {r["dst_status"]}, '
                 f'{fmt_bytes(r["bytes"])} of RAM sent')
        eq(t, r['status'], 'failed', 'source migration status')
        t.check(r['dst_status'].startswith('gone'),
                f'destination still there: {r["dst_status"]}')
        eq(t, src.qmp('query-status')['status'], before,
           'source run state after the failed migration')
        eq(t, device_size(src), PLUG, 'source device size after the '
                                      'failed migration')
        out = ''
        for log in glob.glob(os.path.join(dst.workdir, '*.log')):
            with open(log, errors='replace') as f:
                out += f.read()
        t.log(f'destination output: {out.strip()[-600:]}')
        t.check(re.search(r'virtio-mem: preallocating the 1073741824 bytes '
                          r'the source has plugged failed', out),
                f'the destination did not say why it failed:\n{out}')
    finally:
        for vm in (src, dst):
            if vm is not None:
                t.kill(vm)
        subprocess.run(['umount', mnt], check=False)


@test('prealloc-incoming-postcopy')
def t_prealloc_incoming_postcopy(t):
    # Postcopy must find unreceived pages unpopulated: a destination that
    # would preallocate refuses, before RAM, and says why.
    src = dst = None
    try:
        sbe = Backend('memfd', SIZE, t.tmp)
        dbe = Backend('memfd', SIZE, t.tmp)
        src, dst = incoming_pair(t, sbe.obj, dbe.obj, SIZE, True)
        for vm in (src, dst):
            migration_caps(vm, postcopy_ram=True)
        plug_once(t, src, PLUG)
        r = migrate_to_vm(t, src, dst, [])
        out = ''
        for log in glob.glob(os.path.join(dst.workdir, '*.log')):
            with open(log, errors='replace') as f:
                out += f.read()
        t.figure(f'x-prealloc-incoming with postcopy-ram: source '
                 f'{r["status"]}, destination {r["dst_status"]}, '
                 f'{fmt_bytes(r["bytes"])} of RAM sent')
        eq(t, r['status'], 'failed', 'source migration status')
        t.check("virtio-mem: 'x-prealloc-incoming' cannot be used with "
                "postcopy" in out, f'destination output:\n{out}')
        eq(t, device_size(src), PLUG, 'source device size')
    finally:
        for vm in (src, dst):
            if vm is not None:
                t.kill(vm)


ANALYZE = os.path.join(ROOT, 'build', 'qemu', 'scripts',
                       'analyze-migration.py')


@test('prealloc-incoming-vmdesc')
def t_prealloc_incoming_vmdesc(t):
    # The early section must be in the stream's device description
    # (QEMU_VM_VMDESCRIPTION), or QEMU's own scripts/analyze-migration.py
    # cannot read a stream made with x-prealloc-incoming=on.
    if not os.path.exists(ANALYZE):
        t.skip(f'no {os.path.relpath(ANALYZE, ROOT)} (make tree)')
    for incoming in (True, False):
        what = f'x-prealloc-incoming={"on" if incoming else "off"}'
        be = Backend('memfd', SIZE, t.tmp)
        args = prealloc_args(be.obj, SIZE)
        args[-1] += f',x-prealloc-incoming={"on" if incoming else "off"}'
        vm = t.vm(args, qtest=True, name='src')
        plug_once(t, vm, PLUG)
        path = os.path.join(t.tmp, f'stream-{int(incoming)}')
        vm.qmp('migrate', uri=f'exec:cat > {path}')
        deadline = time.monotonic() + 120
        while True:
            st = vm.qmp('query-migrate')['status']
            if st in ('completed', 'failed', 'cancelled'):
                break
            t.check(time.monotonic() < deadline, f'{what}: migration {st}')
            time.sleep(0.1)
        eq(t, st, 'completed', f'{what}: migration to a file')
        t.kill(vm)
        r = subprocess.run(['python3', ANALYZE, '-f', path],
                           capture_output=True, text=True, timeout=300,
                           check=False)
        t.check(r.returncode == 0, f'{what}: analyze-migration.py exited '
                                   f'with {r.returncode}:\n'
                                   f'{r.stderr.strip()[-1500:]}')
        dump = json.loads(r.stdout)
        early = [k for k in dump if '/virtio-mem-device-early-' in k]
        late = [k for k in dump if re.search(r'/virtio-mem \(\d+\)$', k)]
        t.figure(f'{what}: analyze-migration.py read the stream '
                 f'({fmt_bytes(os.path.getsize(path))}): early sections '
                 f'{early}, virtio-mem sections {late}')
        eq(t, len(early), 1 if incoming else 0, f'{what}: early sections')
        eq(t, len(late), 1, f'{what}: virtio-mem sections')
        if incoming:
            eq(t, int(dump[early[0]]['size'], 0), PLUG,
               f'{what}: size in the early section')
