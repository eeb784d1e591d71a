"""Cost test 3: the other paths that read a whole RAM block.

dump-*: `dump-guest-memory` (ELF, paging off) of a paused VM with 512 MiB
of boot RAM and an idle / unplug-all 64 GiB memory-backend-ram device,
written into a FIFO whose reader counts the bytes.  Asserts: off's dump
holds at least the boot RAM, and on's is at most off's + 1%.

bgsnap-*: a background snapshot (capability background-snapshot, which
write-protects guest RAM with userfaultfd and first populates it) of a VM
with 512 MiB of boot RAM and an idle / unplug-all 2 GiB
memory-backend-memfd device, started paused (-S, TCG) and continued
before the snapshot (QEMU 7.2 aborts a background snapshot taken in the
'prelaunch' state of -S) with a firmware of HLT instructions (the vCPU
halts at once and writes nothing: the snapshot's size does not vary),
migrated into a counting socket.  Asserts: both complete; on's stream is
at most off's + 1%; with on the QEMU's RSS, the memfd's allocated bytes and
the host's Shmem grow by less than 64 MiB (Shmem alone over: measured once
more).
Skipped, with QEMU's error, where the kernel refuses write protection."""

import os
import threading
import time

from costlib import (GiB, MiB, STATES, Backend, Sampler,
                     test, vm_args, prepare, migrate_to_sink, run_on_growth,
                     check_growth, run_text, check_stream, fmt_bytes,
                     mode_name)

DUMP_DEV = 64 * GiB
DUMP_BOOT = 512 * MiB
SNAP_DEV = 2 * GiB
SNAP_BOOT = 512 * MiB


class FifoCounter:
    """A FIFO whose reader thread counts what is written into it."""

    def __init__(self, path):
        self.path, self.count = path, 0
        os.mkfifo(path, 0o600)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        with open(self.path, 'rb', buffering=0) as f:
            while True:
                data = f.read(4 * MiB)
                if not data:
                    break
                self.count += len(data)

    def close(self):
        """After the writer is done (or never came): end the reader."""
        if self._thread.is_alive():
            try:    # a writer that never opened: let the reader's open end
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        self._thread.join(30)


def dump_case(t, state):
    size = {}
    for dynamic in (False, True):
        backend = Backend('ram', DUMP_DEV, t.tmp)
        vm = t.vm(vm_args(backend, dynamic, boot=DUMP_BOOT),
                  qtest=(state != 'idle'))
        prepare(t, vm, state, dynamic)
        sampler = Sampler(vm.pid, backend)
        fifo = FifoCounter(os.path.join(t.tmp, f'dump-{mode_name(dynamic)}'))
        t0 = time.monotonic()
        try:
            vm.qmp('dump-guest-memory', paging=False,
                   protocol='file:' + fifo.path)
        finally:
            fifo.close()
        secs = time.monotonic() - t0
        sampler.stop()
        size[dynamic] = fifo.count
        t.figure(f'{mode_name(dynamic)}: dump {fmt_bytes(fifo.count)} '
                 f'({fifo.count} B) in {secs:.2f}s; {sampler.text()}')
        t.kill(vm)
    t.check(size[False] >= DUMP_BOOT,
            f'off: dump of {fmt_bytes(size[False])} is smaller than the boot '
            f'RAM ({fmt_bytes(DUMP_BOOT)})')
    t.check(size[True] <= size[False] * 1.01,
            f'on: dump {fmt_bytes(size[True])} vs off '
            f'{fmt_bytes(size[False])} (limit +1%)')


def bgsnap_once(t, state, dynamic):
    backend = Backend('memfd', SNAP_DEV, t.tmp)
    # QEMU 7.2 aborts a background snapshot taken in the 'prelaunch' state
    # of -S ("invalid runstate transition"), so the VM must run, but a
    # running firmware would make the snapshot's size vary: the firmware
    # is 64 KiB of HLT instructions, the vCPU halts at the reset vector.
    bios = os.path.join(t.tmp, 'hlt.bin')
    with open(bios, 'wb') as f:
        f.write(b'\xf4' * (64 * 1024))
    vm = t.vm(vm_args(backend, dynamic, boot=SNAP_BOOT) + ['-bios', bios],
              qtest=(state != 'idle'))
    prepare(t, vm, state, dynamic)
    vm.qmp('cont')
    reply = vm.m.qmp('migrate-set-capabilities', capabilities=[
        {'capability': 'background-snapshot', 'state': True}])
    if 'error' in reply:
        t.skip('background-snapshot refused: '
               + reply['error'].get('desc', str(reply['error'])))
    sampler = Sampler(vm.pid, backend)
    r = migrate_to_sink(t, vm, sampler, stop='kill')
    err = r['info'].get('error-desc', '')
    if r['status'] == 'failed' and not dynamic and \
            ('fault' in err or 'kernel' in err or 'snapshot' in err):
        t.skip(f'background snapshot failed: {err}')
    t.figure(f'{mode_name(dynamic)}: {run_text(r)}; peak growth '
             f'{sampler.text()}')
    t.kill(vm)
    return r, sampler.peak


def bgsnap_case(t, state):
    off, _ = bgsnap_once(t, state, False)
    on, _, over = run_on_growth(t, lambda: bgsnap_once(t, state, True))
    check_stream(t, off, on, 'snapshot')
    check_growth(t, over)


def _register(state):
    test(f'dump-{state}')(lambda t: dump_case(t, state))
    test(f'bgsnap-memfd-{state}')(lambda t: bgsnap_case(t, state))


for _state in STATES:
    _register(_state)
