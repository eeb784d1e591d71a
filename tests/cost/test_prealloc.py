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
"""

import os
import re
import signal
import subprocess
import time

from costlib import (GiB, MiB, Backend, test, device_size, fmt_bytes,
                     MACHINE, ACCEL, BOOT_RAM, DEV)
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
