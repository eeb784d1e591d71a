"""Real-guest tests 1-5: plugging, data, reset, runtime device_add, on vs off.
"""

import os
import re
import shlex
import subprocess
import time

from vmguest import DEFAULT_APPEND
from e2elib import (GiB, MiB, MACHINE, PATCHED, STOCK, Failure, test,
                    ERR_NEEDS_INACCESSIBLE, wait_for_binary,
                    memdev_args, vmem_args, device_info, set_requested,
                    settle, check_aliases, ranges_size,
                    online_blocks, zoneinfo, iomem, direct_regions,
                    container_regions, memtotal_ok, fmt, guest_mount_scratch,
                    guest_write_pattern, check_pattern, pattern_size)


def check_step(t, vm, vid, memdev, want, base_memtotal, slot_size,
               dynamic=True):
    """After a resize to `want`: device size, guest view and mapped
    aliases agree exactly.  Returns the settle() result."""
    st = settle(vm, vid, want)
    info, ranges = st['info'], st['ranges']
    t.eq(info['size'], want, f'{vid} size (query-memory-devices)')
    t.eq(info['requested-size'], want, f'{vid} requested-size')
    t.eq(ranges_size(ranges), want, f'guest System RAM in {vid} range')
    bs, online = online_blocks(vm)
    lo, hi = st['base'] // bs, (st['base'] + st['maxsize']) // bs
    dev_blocks = [b for b in online if lo <= b < hi]
    t.eq(len(dev_blocks) * bs, want,
         f'online memory blocks in {vid} range x block size')
    delta = st['memtotal'] - base_memtotal
    t.check(memtotal_ok(delta, want),
            f'guest MemTotal grew by {fmt(delta)} ({delta} B) for '
            f'{fmt(want)} plugged')
    text = vm.hmp('info mtree')
    if dynamic:
        check_aliases(t, vm, memdev, st['base'], st['maxsize'],
                                slot_size, ranges, text)
        t.eq(len(container_regions(vm, text)), 1,
             'virtio-mem containers in address space memory')
        t.eq(direct_regions(vm, memdev, text), [],
             f'{memdev} mapped directly')
    st['delta'] = delta
    st['mtree'] = text
    t.log(f'{vid}: size {fmt(want)}, guest RAM {fmt(ranges_size(ranges))} '
          f'in {len(ranges)} range(s), MemTotal +{fmt(delta)}, '
          f'{len(vm.mapped_memslots(memdev, text))} aliases mapped')
    return st


@test('1-plug-256G-device-1G-4G-16G-0')
def t1_plug_steps(t):
    vm = t.vm(memory='1G', maxmem='257G',
              extra_args=memdev_args('mem0', '256G')
              + vmem_args('vmem0', 'mem0', True))
    info = device_info(vm, 'vmem0')
    t.eq(info['max-size'], 256 * GiB, 'max-size')
    t.eq(info['size'], 0, 'size at boot')
    t.eq(vm.mapped_memslots('mem0'), [], 'aliases mapped at boot')
    t.eq(len(container_regions(vm)), 1, 'virtio-mem container')
    base = vm.meminfo('MemTotal')
    # 256 GiB device filling maxmem-ram: 256 memslots of 1 GiB (spec 5).
    for want in (1 * GiB, 4 * GiB, 16 * GiB, 0):
        set_requested(vm, 'vmem0', want)
        st = check_step(t, vm, 'vmem0', 'mem0', want, base, 1 * GiB)
        for a in vm.mapped_memslots('mem0', st['mtree']):
            t.check(a['index'] < 256, f'memslot-{a["index"]} beyond 256')
        if want:
            t.eq(len(vm.mapped_memslots('mem0', st['mtree'])),
                 want // GiB, 'mapped aliases')
    t.eq(vm.meminfo('MemTotal'), base, 'MemTotal after unplugging all')


@test('1b-on-requires-unplugged-inaccessible')
def t1b_realize_error(t):
    """Spec section 2: with dynamic-memslots=on, an explicit
    unplugged-inaccessible=off fails realize with exactly upstream's message
    (no guest boot: QEMU must refuse to start), and 'auto' resolves to 'on'."""
    wait_for_binary(PATCHED)
    for ui in ('off', 'auto'):
        cmd = [PATCHED, '-machine', MACHINE, '-accel', 'tcg', '-nodefaults',
               '-display', 'none', '-S', '-m', '1G,maxmem=5G',
               '-object', 'memory-backend-ram,id=mem0,size=4G,reserve=off',
               '-device', 'virtio-mem-pci,id=vmem0,memdev=mem0,'
               f'unplugged-inaccessible={ui},dynamic-memslots=on',
               '-monitor', 'stdio']
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              check=False, input='qom-get /machine/peripheral/'
                              'vmem0 unplugged-inaccessible\nquit\n')
        t.log(f'unplugged-inaccessible={ui}: exit {proc.returncode}, '
              f'{proc.stderr.strip()}')
        if ui == 'off':
            t.check(proc.returncode != 0,
                    f'QEMU started with dynamic-memslots=on,unplugged-'
                    f'inaccessible=off: {shlex.join(cmd)}')
            t.check(ERR_NEEDS_INACCESSIBLE in proc.stderr,
                    f'error for unplugged-inaccessible=off is '
                    f'{proc.stderr.strip()!r}, want it to contain '
                    f'{ERR_NEEDS_INACCESSIBLE!r}; command: {shlex.join(cmd)}')
        else:
            t.check(proc.returncode == 0 and '"on"' in proc.stdout,
                    f'unplugged-inaccessible=auto with dynamic-memslots=on '
                    f'should start and resolve to "on": exit '
                    f'{proc.returncode}, stderr {proc.stderr.strip()!r}, '
                    f'monitor output {proc.stdout[-300:]!r}')


@test('2-data-in-hotplugged-memory-survives')
def t2_data(t):
    # Boot RAM 512M; the pattern file is bigger than all boot memory, so
    # most of it has to live in the (online_movable) hot-plugged memory.
    vm = t.vm(memory='512M', maxmem='17G',
              extra_args=memdev_args('mem0', '16G')
              + vmem_args('vmem0', 'mem0', True))
    base = vm.meminfo('MemTotal')
    set_requested(vm, 'vmem0', 1 * GiB)
    st = check_step(t, vm, 'vmem0', 'mem0', 1 * GiB, base, 1 * GiB)
    dev_lo = st['base'] // 4096
    dev_hi = (st['base'] + st['maxsize']) // 4096
    guest_mount_scratch(vm)
    z0 = zoneinfo(vm)
    mov = z0.get('Movable', {})
    t.check(mov.get('managed', 0) == GiB // 4096,
            f'Movable zone manages {mov.get("managed")} pages, want '
            f'{GiB // 4096} (the plugged GiB, onlined movable)')
    t.check(dev_lo <= mov['start_pfn'] and
            mov['start_pfn'] + mov['spanned'] <= dev_hi,
            f'Movable zone pfns {mov["start_pfn"]}+{mov["spanned"]} not '
            f'inside the device [{dev_lo}, {dev_hi})')
    nonmov_free = sum(z.get('free', 0) for n, z in z0.items()
                      if n != 'Movable') * 4096
    chunks = 640
    size_a = pattern_size(chunks, 0, 'a')
    t.check(size_a > base, f'pattern {fmt(size_a)} must exceed boot '
                           f'MemTotal {fmt(base)}')
    t.log(f'writing {fmt(size_a)} pattern /mnt/a (boot MemTotal '
          f'{fmt(base)}, free outside Movable {fmt(nonmov_free)})')
    guest_write_pattern(vm, '/mnt/a', chunks, 0, 'a')
    z1 = zoneinfo(vm)
    used = (z0['Movable']['free'] - z1['Movable']['free']) * 4096
    t.log(f'Movable zone (device memory) use grew by {fmt(used)}')
    t.check(used >= size_a - nonmov_free,
            f'only {fmt(used)} of the {fmt(size_a)} file went to the '
            f'hot-plugged memory; {fmt(nonmov_free)} was free elsewhere')
    t.check(used >= size_a // 2,
            f'only {fmt(used)} of the {fmt(size_a)} file is in the '
            'hot-plugged (Movable) memory')
    check_pattern(t, vm, '/mnt/a', chunks, 0, 'a')
    # Grow: the data stays; write a second file (830 MB) that no longer
    # fits in the first GiB, so a good part of it lands in the second.
    set_requested(vm, 'vmem0', 2 * GiB)
    check_step(t, vm, 'vmem0', 'mem0', 2 * GiB, base, 1 * GiB)
    check_pattern(t, vm, '/mnt/a', chunks, 0, 'a')
    guest_write_pattern(vm, '/mnt/b', 800, 0, 'b')
    check_pattern(t, vm, '/mnt/b', 800, 0, 'b')
    # Shrink back to 1 GiB after deleting a: the guest has to migrate the
    # part of b that sits in the second GiB before it can unplug it.
    vm.run('rm /mnt/a', check=True)
    mig0 = vmstat(vm, 'pgmigrate_success')
    set_requested(vm, 'vmem0', 1 * GiB)
    check_step(t, vm, 'vmem0', 'mem0', 1 * GiB, base, 1 * GiB)
    migrated = vmstat(vm, 'pgmigrate_success') - mig0
    t.log(f'guest migrated {migrated} pages ({fmt(migrated * 4096)}) to '
          'unplug the second GiB')
    t.check(migrated > 0, 'the guest unplugged 1 GiB holding part of /mnt/b '
                          'without migrating a page')
    check_pattern(t, vm, '/mnt/b', 800, 0, 'b')


def vmstat(vm, field):
    _, out = vm.run(f'grep "^{field} " /proc/vmstat', check=True)
    return int(out.split()[1])


RESET_ROUNDS = int(os.environ.get('E2E_RESET_ROUNDS', '20'))
# Memory-growth check.  VmRSS of the QEMU process alone is no measure: it
# grows by itself as each boot touches more of the 512 MiB boot RAM and as
# TCG fills its code buffer.  So the RSS is split by mapping (/proc/PID/smaps)
# into boot RAM (the 512 MiB mapping), the device's memory backend (the
# 8 GiB mapping), TCG's code buffer (the rwx anonymous mapping) and the rest
# (QEMU's heap etc.), all measured at the same point of each round: paused,
# right after system_reset unplugged everything.  Each round the guest
# writes 256 MiB into the plugged memory first.  Bounds:
#  - device backend RSS after the reset <= DEV_RSS_NOISE (all discarded);
#  - "rest" may not grow by more than RSS_NOISE over the rounds after the
#    warm-up round 2 (a leak per reset or per plug shows up there).
DEV_RSS_NOISE = 4 * MiB
RSS_NOISE = 16 * MiB


def rss_split(pid, ram_size, dev_size):
    """{'total', 'ram', 'dev', 'tcg', 'rest'} RSS bytes of QEMU."""
    parts = {'total': 0, 'ram': 0, 'dev': 0, 'tcg': 0, 'rest': 0}
    cur = None
    with open(f'/proc/{pid}/smaps') as f:
        for line in f:
            m = re.match(r'^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)',
                         line)
            if m:
                size = int(m.group(2), 16) - int(m.group(1), 16)
                anon = m.group(4) == '0'
                if anon and size == dev_size:
                    cur = 'dev'
                elif anon and ram_size <= size <= ram_size + 4 * MiB:
                    cur = 'ram'
                elif anon and m.group(3).startswith('rwx'):
                    cur = 'tcg'
                else:
                    cur = 'rest'
            elif line.startswith('Rss:') and cur:
                kb = int(line.split()[1]) * 1024
                parts[cur] += kb
                parts['total'] += kb
    return parts


@test(f'3-system-reset-x{RESET_ROUNDS}-with-memory-plugged')
def t3_reset(t):
    # A small TCG code buffer (flushed when full) keeps TCG's own memory
    # from growing through the whole run; nokaslr boots the same kernel
    # layout every time.
    vm = t.vm(memory='512M', maxmem='9G', accel='tcg,tb-size=32',
              append=DEFAULT_APPEND + ' nokaslr',
              extra_args=memdev_args('mem0', '8G')
              + vmem_args('vmem0', 'mem0', True))
    base = vm.meminfo('MemTotal')
    rss = []
    for rnd in range(1, RESET_ROUNDS + 1):
        want = (1 + rnd % 2) * GiB           # 2G, 1G, 2G, ...
        set_requested(vm, 'vmem0', want)
        st = settle(vm, 'vmem0', want)
        t.check(memtotal_ok(st['memtotal'] - base, want),
                f'round {rnd}: MemTotal +{fmt(st["memtotal"] - base)} for '
                f'{fmt(want)}')
        check_aliases(t, vm, 'mem0', st['base'], st['maxsize'], GiB,
                      st['ranges'])
        t.check(vm.mapped_memslots('mem0'), f'round {rnd}: nothing mapped')
        # Touch 256 MiB of the plugged memory.
        vm.run('mkdir -p /mnt && (mountpoint -q /mnt || mount -t tmpfs -o '
               'size=4G tmpfs /mnt) && dd if=/dev/zero of=/mnt/z bs=1M '
               'count=256 2>/dev/null', check=True, timeout=120)
        touched = rss_split(vm.pid, 512 * MiB, 8 * GiB)['dev']
        t.check(touched >= 200 * MiB,
                f'round {rnd}: device backend RSS only {fmt(touched)} after '
                'the guest wrote 256 MiB into hot-plugged memory')
        # Reset while paused, so the guest cannot plug again before we look.
        vm.qmp('stop')
        vm.system_reset(wait=False)
        vm.wait_event('RESET', timeout=30)
        info = device_info(vm, 'vmem0')
        t.eq(info['size'], 0, f'round {rnd}: size after system_reset')
        t.eq(info['requested-size'], want,
             f'round {rnd}: requested-size after system_reset')
        text = vm.hmp('info mtree')
        t.eq([a['name'] for a in vm.mapped_memslots('mem0', text)], [],
             f'round {rnd}: aliases mapped after system_reset')
        t.eq(len(container_regions(vm, text)), 1,
             f'round {rnd}: virtio-mem container after system_reset')
        r = rss_split(vm.pid, 512 * MiB, 8 * GiB)
        rss.append(r)
        t.check(r['dev'] <= DEV_RSS_NOISE,
                f'round {rnd}: device backend RSS {fmt(r["dev"])} after '
                f'system_reset (was {fmt(touched)}), bound '
                f'{fmt(DEV_RSS_NOISE)}')
        vm.qmp('cont')
        vm.wait_ready()
        # The guest plugs the requested size again by itself on boot.
        st = settle(vm, 'vmem0', want)
        check_aliases(t, vm, 'mem0', st['base'], st['maxsize'], GiB,
                      st['ranges'])
        t.log(f'round {rnd}: reset with {fmt(want)} plugged -> 0 plugged, '
              f'no alias; RSS total {fmt(r["total"])} = boot RAM '
              f'{fmt(r["ram"])} + device {fmt(r["dev"])} (was '
              f'{fmt(touched)}) + TCG {fmt(r["tcg"])} + rest '
              f'{fmt(r["rest"])}; rebooted, {fmt(want)} plugged again')
    ref = rss[1] if len(rss) > 1 else rss[0]
    growth = max(x['rest'] for x in rss[1:] or rss) - ref['rest']
    t.log(f'RSS "rest" (QEMU heap etc.): round 2 {fmt(ref["rest"])}, max '
          f'growth after {fmt(growth)} (bound {fmt(RSS_NOISE)}); total RSS '
          f'round 1 {fmt(rss[0]["total"])}, last {fmt(rss[-1]["total"])}')
    t.check(growth <= RSS_NOISE,
            f'QEMU RSS outside guest RAM and TCG grew by {fmt(growth)} over '
            f'{RESET_ROUNDS} resets (bound {fmt(RSS_NOISE)}): '
            f'{[fmt(x["rest"]) for x in rss]}')


def budget(limit_soft, required, free, reserved, size, maxmem_minus_ram,
           used_region_size):
    """The per-device memslot limit of spec section 5 (no vhost, TCG:
    no KVM limit; max is therefore unlimited)."""
    if required >= limit_soft:
        return 1
    limit = limit_soft - required
    limit = min(limit, free - reserved)
    if limit < 1 or free < reserved:
        return 1
    if size == maxmem_minus_ram:
        return limit
    avail = maxmem_minus_ram - used_region_size
    return max(1, int(limit * size / avail))


def slot_geometry(size, block, limit):
    """(S, N) of spec section 3."""
    per = -(-size // limit)
    per = -(-per // block) * block
    s = max(block, 1 * GiB, per)
    return s, -(-size // s)


@test('4-runtime-device_add-budget')
def t4_device_add(t):
    # -m 1G,maxmem=513G: 512 GiB of device memory.  Device A (cold-plugged,
    # 128 GiB, dynamic-memslots=off) needs 1 memslot; device B (object-add +
    # device_add at run time, 384 GiB, on) gets
    #   limit = 256 - required(1) = 255 (free - reserved is unlimited: TCG,
    #   no vhost; reserved = required 1 - used 1 = 0), not all the space
    #   (384G != 512G) -> 255 * 384G / (512G - 128G) = 255 memslots,
    #   S = 384G/255 rounded up to 2 MiB = 1544 MiB, N = 255.
    vm = t.vm(memory='1G', maxmem='513G',
              extra_args=memdev_args('memA', '128G')
              + vmem_args('vmemA', 'memA', False)
              + ['-device', 'pcie-root-port,id=rp1,chassis=1,slot=1'])
    base = vm.meminfo('MemTotal')
    set_requested(vm, 'vmemA', 1 * GiB)
    st = check_step(t, vm, 'vmemA', 'memA', 1 * GiB, base, None,
                    dynamic=False)
    a_base = st['base']
    t.eq(len(direct_regions(vm, 'memA', st['mtree'])), 1,
         'memA mapped directly (dynamic-memslots=off)')
    t.eq(container_regions(vm, st['mtree']), [], 'virtio-mem containers')
    vm.qmp('object-add', **{'qom-type': 'memory-backend-ram', 'id': 'memB',
                            'size': 384 * GiB, 'reserve': False})
    vm.qmp('device_add', **{'driver': 'virtio-mem-pci', 'id': 'vmemB',
                            'memdev': 'memB', 'bus': 'rp1',
                            'requested-size': 0,
                            'unplugged-inaccessible': 'on',
                            'dynamic-memslots': True})
    info = device_info(vm, 'vmemB')
    t.eq(info['max-size'], 384 * GiB, 'vmemB max-size')
    t.check(info['memaddr'] >= a_base + 128 * GiB,
            f'vmemB at {info["memaddr"]:#x} overlaps vmemA')
    limit = budget(256, 1, 1 << 62, 0, 384 * GiB, 512 * GiB, 128 * GiB)
    slot, nslots = slot_geometry(384 * GiB, info['block-size'], limit)
    t.log(f'vmemB at {info["memaddr"]:#x}: expected budget {limit} '
          f'memslots -> S = {fmt(slot)}, N = {nslots}')
    t.eq((limit, slot, nslots), (255, 1544 * MiB, 255), 'spec arithmetic')
    # Wait for the guest's driver to bind to the hot-plugged device.
    deadline = time.monotonic() + 60
    while True:
        rc, out = vm.run('ls /sys/bus/virtio/drivers/virtio_mem/ | '
                         'grep -c virtio')
        if rc == 0 and int(out.split()[0]) == 2:
            break
        if time.monotonic() > deadline:
            raise vm.error('the guest did not bind virtio_mem to the '
                           f'hot-plugged device: {out!r}; lspci-ish: '
                           + vm.run('ls /sys/bus/pci/devices')[1])
        time.sleep(0.5)
    for want in (4 * GiB, 1 * GiB, 0):
        set_requested(vm, 'vmemB', want)
        stb = check_step(t, vm, 'vmemB', 'memB', want, base + 1 * GiB, slot)
        aliases = vm.mapped_memslots('memB', stb['mtree'])
        if want == 4 * GiB:
            t.eq([(a['alias_start'], a['alias_end']) for a in aliases],
                 [(i * slot, (i + 1) * slot - 1) for i in range(3)],
                 'vmemB aliases for 4 GiB (3 slots of 1544 MiB)')
        # Device A unchanged.
        t.eq(len(direct_regions(vm, 'memA', stb['mtree'])), 1,
             'memA still mapped directly')
        t.eq(device_info(vm, 'vmemA')['size'], 1 * GiB, 'vmemA size')
    t.eq(vm.mapped_memslots('memB'), [], 'vmemB aliases after unplug')


def guest_view(t, vm, vid, steps):
    """Run resize steps; return what the guest sees after each."""
    base = vm.meminfo('MemTotal')
    view = []
    for want in steps:
        set_requested(vm, vid, want)
        st = settle(vm, vid, want)
        bs, online = online_blocks(vm)
        # Linux lists an option ROM in 0xc8000-0xeffff only if its checksum
        # holds when it scans.  Under SeaBIOS, 0xe8000 starts with a ROM
        # signature (55 aa, 32 KiB) over bytes that differ from boot to
        # boot, so one binary shows an 'Adapter ROM' there on some boots
        # only (1 of 3 boots of stock 7.2 here).  That is firmware, not the
        # memory layout under test: leave such entries out.
        io = [(d, s, e, n) for d, s, e, n in iomem(vm)
              if not (n == 'Adapter ROM' and e < 0x100000)]
        _, cpuinfo = vm.run('grep -c processor /proc/cpuinfo', check=True)
        view.append({'want': want, 'memtotal': st['memtotal'],
                     'delta': st['memtotal'] - base,
                     'online': online, 'iomem': io,
                     'mtree': vm.hmp('info mtree')})
    return base, view


@test('5-on-off-and-stock-look-identical-to-the-guest')
def t5_on_off(t):
    steps = (1 * GiB, 4 * GiB, 2 * GiB, 0)
    views = {}
    configs = [('on', PATCHED, True), ('off', PATCHED, False)]
    if os.access(STOCK, os.X_OK):
        configs.append(('stock', STOCK, None))
    else:
        t.note(f'stock peer missing ({STOCK}): compared on/off only')
    for label, binary, dyn in configs:
        vm = t.vm(binary=binary, memory='1G', maxmem='17G', name=label,
                  append=DEFAULT_APPEND + ' nokaslr',
                  extra_args=memdev_args('mem0', '16G')
                  + vmem_args('vmem0', 'mem0', dyn))
        views[label] = guest_view(t, vm, 'vmem0', steps)
        t.log(f'{label}: MemTotal base {fmt(views[label][0])}, steps '
              + ', '.join(f'{fmt(v["want"])}->+{fmt(v["delta"])}'
                          for v in views[label][1]))
        t.kill(vm)
    ref_base, ref = views['off']
    for label in views:
        if label == 'off':
            continue
        b, v = views[label]
        t.eq(b, ref_base, f'{label} vs off: boot MemTotal')
        for a, r in zip(v, ref):
            w = fmt(a['want'])
            t.eq(a['memtotal'], r['memtotal'], f'{label} vs off at {w}: '
                                               'MemTotal')
            t.eq(a['online'], r['online'], f'{label} vs off at {w}: online '
                                           'memory blocks')
            if a['iomem'] != r['iomem']:
                diff = [x for x in a['iomem'] if x not in r['iomem']] + \
                       ['vs'] + [x for x in r['iomem'] if x not in a['iomem']]
                raise Failure(f'{label} vs off at {w}: /proc/iomem differs: '
                              f'{diff}')
    # The host side: off must look like stock in `info mtree` (address
    # space 'memory'), on must show the container instead of mem0.
    if 'stock' in views:
        for a, r in zip(views['stock'][1], ref):
            sa = strip_mtree(a['mtree'], 'memory')
            sr = strip_mtree(r['mtree'], 'memory')
            if sa != sr:
                raise Failure(f'info mtree (address-space: memory) of off '
                              f'differs from stock at {fmt(a["want"])}:\n'
                              + diff_text(sr, sa))
            xa = address_spaces(a['mtree'])
            xr = address_spaces(r['mtree'])
            if xa != xr:
                extra = sorted(set(xr) - set(xa))
                gone = sorted(set(xa) - set(xr))
                t.note(f'info mtree: address spaces of patched(off) vs '
                       f'stock differ: extra {extra}, missing {gone} (the '
                       "series' device-memory address space; the "
                       "'memory' address space itself is identical)")
                break


def strip_mtree(text, asname):
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith('address-space:') or \
                line.startswith('memory-region:'):
            if inside:
                break
            inside = line == f'address-space: {asname}'
            continue
        if inside:
            out.append(line)
    return out


def address_spaces(text):
    return [line.split(':', 1)[1].strip() for line in text.splitlines()
            if line.startswith('address-space:')]


def diff_text(a, b):
    import difflib
    return '\n'.join(difflib.unified_diff(a, b, 'stock', 'patched-off',
                                          lineterm='', n=1))
