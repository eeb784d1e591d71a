"""Cost test 1: the migration stream of a paused VM (-m 2G, q35, TCG) with a
64 GiB virtio-mem device that is idle (never plugged) or had 1 GiB plugged
and then everything unplugged, on memory-backend-ram, -memfd, -file (a
sparse file) and hugetlbfs (a hugetlb memfd, only where the host has huge
pages reserved).  The stream goes to a socket that counts and drops it.
Asserts: off and on complete, and on's stream <= off's * 1.01.  Records the
stream sizes, the zero pages sent and the times."""

from costlib import (GiB, STATES, Backend, Sampler, test, vm_args, prepare,
                     migrate_to_sink, run_text, check_stream, sparse_dir,
                     hugepage_size, mode_name)

DEV_SIZE = 64 * GiB


def stream_case(t, kind, state):
    hugepage, tmp = None, t.tmp
    if kind == 'file':
        where, why = sparse_dir()
        if why:
            t.skip(why)
        tmp = t.mkdtemp(where)
    if kind == 'hugetlb':
        hugepage, why = hugepage_size()
        if why:
            t.skip(why)
    res = {}
    for dynamic in (False, True):
        backend = Backend(kind, DEV_SIZE, tmp, hugepage)
        vm = t.vm(vm_args(backend, dynamic), qtest=(state != 'idle'))
        prepare(t, vm, state, dynamic)
        sampler = Sampler(vm.pid, backend)
        r = migrate_to_sink(t, vm, sampler)
        res[dynamic] = r
        t.figure(f'{mode_name(dynamic)}: {run_text(r)}; {sampler.text()}')
        t.kill(vm)
    check_stream(t, res[False], res[True])


def _register(kind, state):
    test(f'stream-{kind}-{state}')(lambda t: stream_case(t, kind, state))


for _kind in ('ram', 'memfd', 'file', 'hugetlb'):
    for _state in STATES:
        _register(_kind, _state)
