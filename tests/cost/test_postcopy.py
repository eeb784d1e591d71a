"""Cost test 4: postcopy must not populate unplugged memory on the
destination.

Source: paused VM (-m 2G, TCG) with a 16 GiB memory-backend-ram device, in
one of three states: 1 GiB plugged (qtest driver), idle, or 1 GiB plugged
and then everything unplugged.  Destination: the same VM with -incoming
defer and the device on memory-backend-memfd, so that what it populates is
measurable (the memfd's allocated bytes, sampled every 20 ms).  Both sides
enable postcopy-ram; the source migrates over a unix socket with
max-bandwidth 8 MiB/s (so precopy cannot finish first), migrate-start-postcopy
right away (postcopy runs unthrottled), and the test waits until the source
has completed and the destination has left 'inmigrate'.  Asserts, for off
and on: the source went through 'postcopy-active' (MIGRATION events), the
migration completed, and the destination's memfd grew by at most the
plugged size + 64 MiB (not by the device's size).  Needs userfaultfd;
skipped with QEMU's error where postcopy is refused."""

import time

from costlib import (GiB, MiB, PLUG, Backend, Sampler, Failure, test,
                     vm_args, prepare, migration_caps, fmt_bytes, mode_name)

DEV_SIZE = 16 * GiB
MARGIN = 64 * MiB
PRECOPY_BANDWIDTH = 8 * MiB
TIMEOUT = 120


def postcopy_once(t, state, dynamic):
    plugged = PLUG if state == 'plugged' else 0
    src = t.vm(vm_args(Backend('ram', DEV_SIZE, t.tmp), dynamic),
               qtest=(state != 'idle'), name=f'src-{mode_name(dynamic)}')
    prepare(t, src, state, dynamic)
    dst_backend = Backend('memfd', DEV_SIZE, t.tmp)
    dst = t.vm(vm_args(dst_backend, dynamic, incoming=True),
               name=f'dst-{mode_name(dynamic)}')
    limit = plugged + GiB       # stop a run that populates the device
    sampler = Sampler(dst.pid, dst_backend, limit=limit)
    for vm in (src, dst):
        reply = vm.m.qmp('migrate-set-capabilities', capabilities=[
            {'capability': 'postcopy-ram', 'state': True}])
        if 'error' in reply:
            t.skip('postcopy-ram refused: ' + reply['error'].get('desc', ''))
    migration_caps(src, events=True)
    src.qmp('migrate-set-parameters', **{
        'max-bandwidth': PRECOPY_BANDWIDTH, 'max-postcopy-bandwidth': 0})
    uri = 'unix:' + t.tmp + f'/postcopy-{mode_name(dynamic)}.sock'
    reply = dst.m.qmp('migrate-incoming', uri=uri)
    if 'error' in reply:
        t.skip('migrate-incoming with postcopy-ram refused: '
               + reply['error'].get('desc', ''))
    t0 = time.monotonic()
    src.qmp('migrate', uri=uri)
    src.qmp('migrate-start-postcopy')
    stopped = None
    while True:
        info = src.qmp('query-migrate')
        status = info.get('status')
        if status in ('completed', 'failed', 'cancelled'):
            break
        if sampler.over or time.monotonic() - t0 > TIMEOUT:
            stopped = sampler.over or f'stopped: not done after {TIMEOUT}s'
            t.log(f'{stopped}: killing both QEMUs (status {status})')
            sampler.take()
            peak = dict(sampler.peak)
            t.kill(dst)
            t.kill(src)
            sampler.stop(after=0)
            return {'status': status, 'stopped': stopped, 'peak': peak,
                    'seconds': time.monotonic() - t0, 'postcopy': None,
                    'plugged': plugged, 'ram': info.get('ram', {})}
        time.sleep(0.05)
    seconds = time.monotonic() - t0
    if status == 'failed' and 'userfault' in info.get('error-desc', ''):
        t.skip(f'postcopy failed: {info["error-desc"]}')
    deadline = time.monotonic() + 60
    while dst.qmp('query-status')['status'] == 'inmigrate':
        if time.monotonic() > deadline:
            raise Failure('destination still inmigrate 60 s after the '
                          'source completed')
        time.sleep(0.1)
    sampler.stop()
    events = [e['data']['status'] for e in src.m.get_qmp_events()
              if e['event'] == 'MIGRATION']
    r = {'status': status, 'stopped': stopped, 'peak': dict(sampler.peak),
         'seconds': seconds, 'postcopy': 'postcopy-active' in events,
         'plugged': plugged, 'ram': info.get('ram', {}),
         'error': info.get('error-desc', ''), 'events': events,
         'dst_status': dst.qmp('query-status')['status']}
    t.kill(dst)
    t.kill(src)
    return r


def postcopy_case(t, state):
    res = {}
    for dynamic in (False, True):
        r = postcopy_once(t, state, dynamic)
        res[dynamic] = r
        t.figure(f'{mode_name(dynamic)}: {r["status"]} in '
                 f'{r["seconds"]:.2f}s'
                 + (f' ({r["stopped"]})' if r['stopped'] else '')
                 + f', went through postcopy: {r["postcopy"]}, source sent '
                 f'{r["ram"].get("duplicate", "?")} zero pages '
                 f'{r["ram"].get("normal", "?")} normal; destination memfd '
                 f'+{fmt_bytes(r["peak"]["backend"])} (RSS '
                 f'+{fmt_bytes(r["peak"]["rss"])}), plugged '
                 f'{fmt_bytes(r["plugged"])}')
    for dynamic in (False, True):
        r, m = res[dynamic], mode_name(dynamic)
        bound = r['plugged'] + MARGIN
        t.check(r['peak']['backend'] <= bound,
                f'{m}: the destination populated '
                f'{fmt_bytes(r["peak"]["backend"])} of its memfd, more '
                f'than plugged {fmt_bytes(r["plugged"])} + '
                f'{fmt_bytes(MARGIN)}'
                + (f' ({r["stopped"]})' if r['stopped'] else ''))
        t.check(r['status'] == 'completed',
                f'{m}: migration {r["status"]} {r.get("error", "")}')
        t.check(r['postcopy'], f'{m}: the source never reached '
                               f'postcopy-active (events {r["events"]})')


def _register(state):
    test(f'postcopy-{state}')(lambda t: postcopy_case(t, state))


for _state in ('plugged', 'idle', 'unplug-all'):
    _register(_state)
