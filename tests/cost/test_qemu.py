"""Cost test 5 (issue 12): what an idle or partly plugged device with
dynamic-memslots=on costs QEMU itself, in memory (VmRSS), against the same
paused VM (-m 2G, TCG, -cpu qemu64,phys-bits=48: TiBs of device need more
than qemu64's 40 address bits) without the device.  QEMU 7.2 keeps
dirty-memory bitmaps (3 clients x 1 bit per 4 KiB page, all set when the
RAM block is created) and, while migrating, migration's bitmap (1 bit per
page) over the whole device: 1.5 GiB and 512 MiB for 16 TiB.

qemu-idle-rss: settled VmRSS of the VM without a device, with an idle
16 TiB device (on) and with an idle 1 TiB device (off).  Asserts: on
<= no device + 64 MiB.  off is recorded beside it (QEMU 7.2: + its 96 MiB
of dirty bitmaps; a build may keep off's all-dirty bitmaps without
memory).

qemu-idle-migration: a paused VM migrated into a paused destination (the
same VM, -incoming defer), without a device and with an idle 4 TiB and
16 TiB device (on).  Peak VmRSS (sampled every 20 ms, and VmHWM) of both
QEMUs during the migration.  Asserts: every migration completes; the
source's and the destination's peaks <= those without the device + 64 MiB;
the same number of pages is sent with and without the device.

qemu-plugged-migration: 16 GiB plugged (qtest driver) into a 64 GiB and a
16 TiB device (on), migrated into a counting socket.  Asserts: peak VmRSS
of the 16 TiB one <= the 64 GiB one's + 64 MiB (cost follows what is
plugged, not the device size); both sent the same number of pages (zero +
normal), at least boot RAM + 16 GiB of them and at most 64 MiB more.

Each test skips, with the figures, when the host lacks the memory a build
that keeps today's bitmaps would allocate."""

from costlib import (GiB, MiB, TiB, KiB, Backend, Sampler, Failure, test,
                     vm_args, plain_args, plug, bitmap_bytes, host_guard,
                     migrate_to_sink, migrate_to_vm,
                     settle_rss, fmt_bytes, run_text, ACCEL_WIDE, BOOT_RAM,
                     mode_name)

MARGIN = 64 * MiB
IDLE_ON = 16 * TiB
IDLE_OFF = 1 * TiB          # off keeps 96 MiB of dirty bitmaps for it
MIG_SIZES = (4 * TiB, 16 * TiB)
PLUGGED = 16 * GiB
PLUG_TEXT = f'{PLUGGED // GiB} GiB'
PLUG_SMALL, PLUG_BIG = 64 * GiB, 16 * TiB
PAGE = 4 * KiB


def args_for(t, size, dynamic=True, incoming=False):
    """A paused VM with an idle device of `size` (0: no device)."""
    if not size:
        return plain_args(incoming=incoming, accel=ACCEL_WIDE)
    return vm_args(Backend('ram', size, t.tmp), dynamic, incoming=incoming,
                   accel=ACCEL_WIDE)


def label(size, dynamic=True):
    if not size:
        return 'no device'
    n = f'{size // TiB} TiB' if size >= TiB else f'{size // GiB} GiB'
    return f'{n} {mode_name(dynamic)}'


def fast_migration(vm):
    """No bandwidth limit (7.2's default is 32 MiB/s, zero pages count)."""
    vm.qmp('migrate-set-parameters', **{'max-bandwidth': 64 * GiB})


def sent_pages(r):
    """Pages the source sent: zero pages + normal pages."""
    return r['ram'].get('duplicate', 0) + r['ram'].get('normal', 0)


def incomplete(r, what):
    """Why the migration r did not complete (or None): the source's status,
    and the destination's state for migrate_to_vm()."""
    dst = r.get('dst_status')
    if r['status'] == 'completed' and dst != 'inmigrate' and \
            not (dst or '').startswith('gone'):
        return None
    why = [r['info'].get('error-desc'), r['stopped'],
           dst and f'destination {dst}']
    why = ', '.join(x for x in why if x)
    return f'{what}: migration {r["status"]} ({why})'


def failures(errs):
    if errs:
        raise Failure('; '.join(errs))


@test('qemu-idle-rss')
def idle_rss(t):
    host_guard(t, bitmap_bytes(IDLE_ON, 3),
               f'an idle {label(IDLE_ON)} VM')
    rss = {}
    for size, dynamic in ((0, True), (IDLE_ON, True), (IDLE_OFF, False)):
        vm = t.vm(args_for(t, size, dynamic), name=label(size, dynamic))
        rss[size] = settle_rss(vm.pid)
        t.kill(vm)
    base = rss[0]
    t.figure(f'settled VmRSS: no device {fmt_bytes(base)}, idle '
             f'{label(IDLE_ON)} {fmt_bytes(rss[IDLE_ON])} '
             f'({fmt_bytes(rss[IDLE_ON] - base, True)}), idle '
             f'{label(IDLE_OFF, False)} {fmt_bytes(rss[IDLE_OFF])} '
             f'({fmt_bytes(rss[IDLE_OFF] - base, True)}, its dirty bitmaps '
             f'{fmt_bytes(bitmap_bytes(IDLE_OFF, 3))})')
    # off is only recorded: whether its bitmaps take memory is the
    # implementation's business as long as they behave as today's.
    if rss[IDLE_ON] > base + MARGIN:
        raise Failure(f'idle {label(IDLE_ON)}: VmRSS '
                      f'{fmt_bytes(rss[IDLE_ON])} is '
                      f'{fmt_bytes(rss[IDLE_ON] - base, True)} over the VM '
                      f'without it ({fmt_bytes(base)}), limit '
                      f'+{fmt_bytes(MARGIN)}')


@test('qemu-idle-migration')
def idle_migration(t):
    # Source: dirty bitmaps + migration's; destination: dirty bitmaps +
    # received bitmap.
    host_guard(t, 2 * bitmap_bytes(max(MIG_SIZES)),
               f'migrating an idle {label(max(MIG_SIZES))} VM into another')
    peak, pages, errs = {}, {}, []
    for size in (0,) + MIG_SIZES:
        src = t.vm(args_for(t, size), name=f'src {label(size)}')
        dst = t.vm(args_for(t, size, incoming=True),
                   name=f'dst {label(size)}')
        fast_migration(src)
        s_src, s_dst = Sampler(src.pid), Sampler(dst.pid)
        r = migrate_to_vm(t, src, dst, [s_src, s_dst])
        peak[size] = (s_src.peak_rss(), s_dst.peak_rss())
        pages[size] = sent_pages(r)
        t.figure(f'{label(size)}: {r["status"]} in {r["seconds"]:.2f}s '
                 f'(destination {r["dst_status"]}), '
                 f'{r["ram"].get("duplicate", "?")} zero pages, '
                 f'{r["ram"].get("normal", "?")} normal'
                 + (f' [{r["stopped"]}]' if r['stopped'] else '')
                 + f'; peak VmRSS source {fmt_bytes(peak[size][0])}, '
                 f'destination {fmt_bytes(peak[size][1])}')
        t.kill(src)
        t.kill(dst)
        errs.append(incomplete(r, label(size)))
    errs = [e for e in errs if e]
    complete = not errs
    for size in MIG_SIZES:
        if complete and pages[size] != pages[0]:
            errs.append(f'idle {label(size)}: sent {pages[size]} pages, '
                        f'the VM without it {pages[0]}')
        for i, side in enumerate(('source', 'destination')):
            got, base = peak[size][i], peak[0][i]
            if got > base + MARGIN:
                errs.append(f'idle {label(size)}: {side} peak VmRSS '
                            f'{fmt_bytes(got)} is '
                            f'{fmt_bytes(got - base, True)} over the VM '
                            f'without it ({fmt_bytes(base)}), limit '
                            f'+{fmt_bytes(MARGIN)}')
    failures(errs)


@test('qemu-plugged-migration')
def plugged_migration(t):
    host_guard(t, bitmap_bytes(PLUG_BIG),
               f'migrating {PLUG_TEXT} plugged into '
               f'{label(PLUG_BIG)}')
    res = {}
    for size in (PLUG_SMALL, PLUG_BIG):
        vm = t.vm(args_for(t, size), qtest=True, name=label(size))
        plug(t, vm, True, PLUGGED)
        fast_migration(vm)
        sampler = Sampler(vm.pid)
        r = migrate_to_sink(t, vm, sampler)
        r['peak'] = sampler.peak_rss()
        r['pages'] = sent_pages(r)
        res[size] = r
        t.figure(f'{PLUG_TEXT} plugged into {label(size)}: '
                 f'{run_text(r)}, {r["ram"].get("normal", "?")} normal; '
                 f'{r["pages"]} pages ({fmt_bytes(r["pages"] * PAGE)}); '
                 f'peak VmRSS {fmt_bytes(r["peak"])} (before '
                 f'{fmt_bytes(sampler.base["rss"])})')
        t.kill(vm)
    errs = [e for e in (incomplete(r, f'{PLUG_TEXT} plugged into '
                                      f'{label(size)}')
                        for size, r in res.items()) if e]
    complete = not errs
    small, big = res[PLUG_SMALL], res[PLUG_BIG]
    if big['peak'] > small['peak'] + MARGIN:
        errs.append(f'{PLUG_TEXT} plugged into {label(PLUG_BIG)}: '
                    f'peak VmRSS {fmt_bytes(big["peak"])} is '
                    f'{fmt_bytes(big["peak"] - small["peak"], True)} over '
                    f'the same plugged into {label(PLUG_SMALL)} '
                    f'({fmt_bytes(small["peak"])}), limit '
                    f'+{fmt_bytes(MARGIN)}')
    want = (BOOT_RAM + PLUGGED) // PAGE
    for size, r in res.items() if complete else ():
        if not want <= r['pages'] <= want + MARGIN // PAGE:
            errs.append(f'{label(size)}: sent {r["pages"]} pages, want boot '
                        f'RAM + plugged = {want} (at most '
                        f'{fmt_bytes(MARGIN)} more)')
    if complete and big['pages'] != small['pages']:
        errs.append(f'{label(PLUG_BIG)} sent {big["pages"]} pages, '
                    f'{label(PLUG_SMALL)} {small["pages"]}: the same '
                    f'{PLUG_TEXT} plugged')
    failures(errs)
