"""Cost test 2: host memory while migrating a paused VM whose 8 GiB
memory-backend-memfd virtio-mem device is idle or had 1 GiB plugged and then
everything unplugged.  Sampled every 20 ms during the migration and once
0.3 s after it ended: the source QEMU's VmRSS, the memfd's allocated bytes
(st_blocks of QEMU's open memfd) and the host's Shmem (/proc/meminfo).
Asserts: both migrations complete, and with on each of the three grows by
less than 64 MiB.  off's growth is recorded beside it.

Host Shmem is the whole host's: another process on a shared machine can
move it.  When only it is over the bound while the QEMU's own RSS and memfd
stayed below, the on run is repeated once (and says so)."""

from costlib import (GiB, STATES, Backend, Sampler, test, vm_args, prepare,
                     migrate_to_sink, run_on_growth, check_growth, run_text,
                     fmt_bytes, mode_name)

DEV_SIZE = 8 * GiB


def run_once(t, state, dynamic):
    backend = Backend('memfd', DEV_SIZE, t.tmp)
    vm = t.vm(vm_args(backend, dynamic), qtest=(state != 'idle'))
    prepare(t, vm, state, dynamic)
    sampler = Sampler(vm.pid, backend)
    base = sampler.base
    r = migrate_to_sink(t, vm, sampler)
    after = {k: sampler.last[k] - base[k] for k in base}
    t.figure(f'{mode_name(dynamic)}: before: RSS {fmt_bytes(base["rss"])}, '
             f'memfd {fmt_bytes(base["backend"])}, host Shmem '
             f'{fmt_bytes(base["shmem"])}; peak growth during: '
             f'{sampler.text()}; 0.3 s after: RSS '
             f'{fmt_bytes(after["rss"], True)}, memfd '
             f'{fmt_bytes(after["backend"], True)}, host Shmem '
             f'{fmt_bytes(after["shmem"], True)}; stream {run_text(r)}')
    t.kill(vm)
    return r, sampler.peak


def memory_case(t, state):
    off, _ = run_once(t, state, False)
    t.check(off['status'] == 'completed', f'off: migration {off["status"]}')
    on, _, over = run_on_growth(t, lambda: run_once(t, state, True))
    t.check(on['status'] == 'completed',
            f'on: migration {on["status"]}, {on["stopped"]}')
    check_growth(t, over)


def _register(state):
    test(f'memory-memfd-{state}')(lambda t: memory_case(t, state))


for _state in STATES:
    _register(_state)
