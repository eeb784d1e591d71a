"""Markdown report and gnuplot charts of a bench/run.py result (JSON)."""

import os
import shutil
import subprocess
import tempfile

import lib
from lib import GiB, MiB, TiB, fmt_bytes, fmt_secs, fmt_size, summary

ACCEL_NAMES = {'qtest': '-accel qtest', 'tcg-paused': 'paused TCG VM (-accel tcg -S)',
               'kvm': 'paused KVM VM (-accel kvm -S)'}
ORDER = ['stock', 'off', 'on', 'up-off', 'up-on']
COLORS = {'stock': '#555555', 'off': '#d62728', 'on': '#2ca02c',
          'up-off': '#ff7f0e', 'up-on': '#1f77b4', 'limit': '#9467bd'}


def labels(res):
    return {c['key']: c['label'] for c in res['meta']['configs']}


def keys(res):
    have = {c['key'] for c in res['meta']['configs']}
    return [k for k in ORDER if k in have]


def cell(s, fmt, signed=False):
    if s is None:
        return '-'
    if fmt is fmt_bytes:
        f = lambda v: fmt_bytes(v, signed)  # noqa: E731
    else:
        f = fmt
    if s['n'] == 1:
        return f'{f(s["median"])} (n=1)'
    return f'{f(s["median"])} ({f(s["min"])} – {f(s["max"])})'


def ratio(a, b, floor=0):
    """a / b of medians; '-' when b is (within floor of) zero: a memory
    delta of a few KiB is noise, a ratio against it meaningless."""
    if a is None or b is None:
        return '-'
    a, b = a['median'] if isinstance(a, dict) else a, \
        b['median'] if isinstance(b, dict) else b
    if abs(b) <= floor:
        return '- (≈0)' if b != a else '-'
    if abs(a) <= floor:
        return '≈0'
    r = a / b
    return f'{r:.3f}' if r < 0.1 else f'{r:.2f}'


def first_error(rows):
    for r in rows:
        if 'error' in r:
            return r['error']
    return None


# -- derived figures --------------------------------------------------------------

def idle_stats(res, key, size):
    """(memory over the no-device VM, start-up) summaries, error."""
    idle = res.get('idle', {}).get(key, {})
    base = summary(r.get('vmalloc') for r in idle.get('0', []))
    rows = idle.get(str(size), [])
    mem = None
    if base:
        mem = summary(r['vmalloc'] - base['median'] for r in rows
                      if 'vmalloc' in r)
    start = summary(r.get('start') for r in rows)
    return mem, start, first_error(rows)


def limit_stats(res, n):
    lim = res.get('limit', {})
    base = summary(r.get('vmalloc') for r in lim.get('0', []))
    rows = lim.get(str(n), [])
    if not base:
        return None
    return summary(r['vmalloc'] - base['median'] for r in rows
                   if 'vmalloc' in r)


def plugged_stats(res, key, n):
    """Memory over the same binary's no-device VM (from item 1)."""
    rows = res.get('plugged', {}).get(key, [])
    base = summary(r.get('vmalloc') for r in
                   res.get('idle', {}).get(key, {}).get('0', []))
    if not base:
        return None, first_error(rows)
    vals = [r['steps'][str(n)] - base['median'] for r in rows
            if 'steps' in r and str(n) in r['steps']]
    if n == 0:
        vals = [r['vmalloc'] - base['median'] for r in rows if 'vmalloc' in r]
    return summary(vals), first_error(rows)


def req_stats(res, accel, key, metric):
    r = res.get('requests', {}).get(accel, {}).get(key, {})
    return summary(r.get(metric) or []), r.get('error')


def guest_stats(res, key, size, metric):
    r = res.get('guest', {}).get(key, {})
    return summary(r.get('sizes', {}).get(str(size), {}).get(metric) or []), \
        r.get('error')


def sizes_of(res, section):
    out = set()
    for per in res.get(section, {}).values():
        out |= {int(s) for s in per if int(s)}
    return sorted(out)


# -- charts --------------------------------------------------------------------------------

def gnuplot(script, workdir):
    if not shutil.which('gnuplot'):
        return 'gnuplot is not installed (base/bench-deps.txt)'
    p = subprocess.run(['gnuplot'], input=script.encode(), cwd=workdir,
                       capture_output=True, check=False)
    err = p.stderr.decode('utf-8', 'replace').strip()
    return err or None if p.returncode or p.stdout else None


def charts(res, stem):
    """Write the PNGs; returns {name: file name} of those made."""
    made, errors = {}, []
    lab = labels(res)
    tmp = tempfile.mkdtemp(prefix='bench-plot-')
    head = ('set terminal pngcairo size 900,520 font "sans,10"\n'
            'set grid\nset key top left\nset style data linespoints\n')

    def plot(name, body, datas):
        for fname, text in datas.items():
            with open(os.path.join(tmp, fname), 'w') as f:
                f.write(text)
        out = f'{os.path.basename(stem)}-{name}.png'
        path = os.path.join(os.path.dirname(os.path.abspath(stem)), out)
        err = gnuplot(head + f'set output "{path}"\n' + body, tmp)
        if err:
            errors.append(f'{name}: {err}')
        else:
            made[name] = out

    # 1. idle memory and start-up vs device size
    sizes = sizes_of(res, 'idle')
    if sizes:
        datas, mem_lines, st_lines = {}, [], []
        for k in keys(res):
            rows = []
            for s in sizes:
                mem, st, _ = idle_stats(res, k, s)
                if mem or st:
                    rows.append(f'{s / GiB} '
                                f'{max(mem["median"], 0) / MiB + 1 if mem else "NaN"} '
                                f'{st["median"] if st else "NaN"} '
                                f'{st["min"] if st else "NaN"} '
                                f'{st["max"] if st else "NaN"}')
            datas[f'idle-{k}.dat'] = '\n'.join(rows) + '\n'
            mem_lines.append(f'"idle-{k}.dat" using 1:2 title "{lab[k]}" '
                             f'lc rgb "{COLORS[k]}" lw 2')
            st_lines.append(f'"idle-{k}.dat" using 1:3:4:5 with yerrorlines '
                            f'title "{lab[k]}" lc rgb "{COLORS[k]}" lw 2')
        xt = ', '.join(f'"{fmt_size(s)}" {s / GiB}' for s in sizes)
        plot('idle-memory',
             'set title "Idle paused KVM VM: host kernel memory (VmallocUsed '
             'over a no-device VM)\\nvirtio-mem device, nothing plugged; '
             'missing points: did not start"\n'
             f'set logscale xy\nset xtics ({xt})\n'
             'set xlabel "virtio-mem device size"\n'
             'set ylabel "MiB + 1 (log)"\n'
             'plot ' + ', '.join(mem_lines) + '\n', datas)
        plot('idle-startup',
             'set title "Idle paused KVM VM: time from exec to QMP ready '
             '(median, min-max)"\n'
             f'set logscale x\nset logscale y\nset xtics ({xt})\n'
             'set xlabel "virtio-mem device size"\nset ylabel "seconds (log)"\n'
             'plot ' + ', '.join(st_lines) + '\n', datas)

    # 2. plugged cost vs plugged size, with the limit
    psizes = sorted(int(n) for n in res.get('limit', {}) if int(n))
    if psizes and res.get('plugged'):
        datas, lines = {}, []
        for k in keys(res) + ['limit']:
            rows = []
            for n in psizes:
                s = limit_stats(res, n) if k == 'limit' else \
                    plugged_stats(res, k, n)[0]
                if s:
                    rows.append(f'{n / GiB} {max(s["median"], 0) / MiB + 1}')
            datas[f'plug-{k}.dat'] = '\n'.join(rows) + '\n'
            title = ('limit: same amount of boot RAM' if k == 'limit'
                     else lab[k])
            dash = ' dt 2' if k == 'limit' else ''
            lines.append(f'"plug-{k}.dat" using 1:2 title "{title}" '
                         f'lc rgb "{COLORS[k]}" lw 2{dash}')
        xt = ', '.join(f'"{n // GiB} GiB" {n / GiB}' for n in psizes)
        plot('plugged',
             'set title "1 TiB virtio-mem device on a paused KVM VM: host '
             'kernel memory with N GiB plugged"\n'
             f'set logscale xy\nset xtics ({xt})\n'
             'set xlabel "plugged"\nset ylabel "MiB + 1 (log)"\n'
             'plot ' + ', '.join(lines) + '\n', datas)

    # 3. request cost: grouped bars per accel
    for accel in res.get('requests', {}):
        metrics = [('plug_1g', 'plug 1 GiB'), ('unplug_1g', 'unplug 1 GiB'),
                   ('burst_plug', 'plug burst'),
                   ('burst_unplug', 'unplug burst'),
                   ('txn_0', 'txn, 0 aliases'), ('txn_256', 'txn, 256 mapped')]
        rows = []
        rk = [k for k in keys(res)
              if req_stats(res, accel, k, 'plug_1g')[0]]
        if not rk:
            continue
        for m, title in metrics:
            vals = []
            for k in rk:
                s, _ = req_stats(res, accel, k, m)
                vals.append(f'{s["median"] * 1e3:.6f}' if s else 'NaN')
            rows.append(f'"{title}" ' + ' '.join(vals))
        datas = {f'req-{accel}.dat': '\n'.join(rows) + '\n'}
        cols = ', '.join(
            f'"req-{accel}.dat" using {i + 2}:xtic(1) title "{lab[k]}" '
            f'lc rgb "{COLORS[k]}"' for i, k in enumerate(rk))
        plot(f'requests-{accel}',
             f'set title "virtio-mem requests through the qtest driver '
             f'({ACCEL_NAMES.get(accel, accel)}), '
             '1 TiB device, median"\n'
             'set style data histogram\nset style histogram cluster gap 1\n'
             'set style fill solid 0.8 border -1\nset boxwidth 0.9\n'
             'set logscale y\nset ylabel "milliseconds (log)"\n'
             'set key top left\nset xtics scale 0\n'
             'plot ' + cols + '\n', datas)

    # 4. guest latency
    if res.get('guest'):
        gk = [k for k in keys(res) if k in res['guest']]
        gsizes = sorted({int(s) for v in res['guest'].values()
                         for s in v.get('sizes', {})})
        rows = []
        for s in gsizes:
            for m, title in (('first', 'first change'), ('full', 'all plugged')):
                vals = []
                for k in gk:
                    st, _ = guest_stats(res, k, s, m)
                    vals.append(f'{st["median"]:.4f}' if st else 'NaN')
                rows.append(f'"{s // GiB} GiB {title}" ' + ' '.join(vals))
        datas = {'guest.dat': '\n'.join(rows) + '\n'}
        cols = ', '.join(f'"guest.dat" using {i + 2}:xtic(1) title "{lab[k]}" '
                         f'lc rgb "{COLORS[k]}"' for i, k in enumerate(gk))
        plot('guest',
             'set title "TCG guest: qom-set requested-size until the guest\'s '
             'MemTotal changes / reaches the new size (median)"\n'
             'set style data histogram\nset style histogram cluster gap 1\n'
             'set style fill solid 0.8 border -1\nset boxwidth 0.9\n'
             'set ylabel "seconds"\nset xtics scale 0 rotate by -20\n'
             'plot ' + cols + '\n', datas)
    shutil.rmtree(tmp, ignore_errors=True)
    return made, errors


# -- markdown ----------------------------------------------------------------------------------

def table(head, rows):
    out = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' for _ in head) + '|']
    out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return out


def headline(res):
    """The figures for the README: list of (what, value)."""
    lab = labels(res)
    out = []
    mem = {k: idle_stats(res, k, TiB) for k in keys(res)}
    if any(m[0] for m in mem.values()):
        out.append(('1 TiB device, idle: host kernel memory',
                    ', '.join(f'{lab[k]} {fmt_bytes(m[0]["median"], True)}'
                              if m[0] else f'{lab[k]} failed'
                              for k, m in mem.items())))
        out.append(('1 TiB device, idle: start-up (exec to QMP ready)',
                    ', '.join(f'{lab[k]} {fmt_secs(m[1]["median"])}'
                              if m[1] else f'{lab[k]} failed'
                              for k, m in mem.items())))
    if res.get('plugged') and res.get('limit'):
        parts = []
        for n in PLUG_SIZES_DEFAULT:
            lim = limit_stats(res, n)
            on, _ = plugged_stats(res, 'on', n)
            up, _ = plugged_stats(res, 'up-on', n)
            if lim and on:
                parts.append(f'{n // GiB} GiB: {ratio(on, lim)}'
                             + (f' (upstream {ratio(up, lim)})' if up else ''))
        out.append(('1 TiB device, plugged, patched on: cost / limit '
                    '(same amount of boot RAM)', '; '.join(parts)))
    for accel in res.get('requests', {}):
        parts = []
        for m, what in (('plug_1g', 'plug'), ('unplug_1g', 'unplug')):
            on, _ = req_stats(res, accel, 'on', m)
            off, _ = req_stats(res, accel, 'off', m)
            if on and off:
                parts.append(f'{what} {ratio(on, off)} '
                             f'({fmt_secs(on["median"])} vs '
                             f'{fmt_secs(off["median"])})')
        if parts:
            out.append((f'1 GiB plug/unplug cost on/off '
                        f'({ACCEL_NAMES.get(accel, accel)})',
                        ', '.join(parts)))
    return out


PLUG_SIZES_DEFAULT = [1 * GiB, 4 * GiB, 16 * GiB, 64 * GiB]


def targets(res):
    """[(ok or None, text)] for the issue's targets."""
    out = []
    lab = labels(res)
    up = {s: idle_stats(res, 'up-on', s)[0] for s in sizes_of(res, 'idle')}
    for s in sizes_of(res, 'idle'):
        on = idle_stats(res, 'on', s)[0]
        if on and up[s]:
            ok = on['median'] <= up[s]['median'] + 4 * MiB
            out.append((ok, f'idle {fmt_size(s)}: patched on '
                            f'{fmt_bytes(on["median"], True)} vs upstream on '
                            f'{fmt_bytes(up[s]["median"], True)} '
                            '(equal within 4 MiB or better)'))
    for n in PLUG_SIZES_DEFAULT:
        on = plugged_stats(res, 'on', n)[0]
        upn = plugged_stats(res, 'up-on', n)[0]
        if on and upn:
            ok = on['median'] <= upn['median'] + 4 * MiB
            out.append((ok, f'plugged {n // GiB} GiB: patched on '
                            f'{fmt_bytes(on["median"], True)} vs upstream on '
                            f'{fmt_bytes(upn["median"], True)}'))
    for accel in res.get('requests', {}):
        for m in ('plug_1g', 'unplug_1g', 'burst_plug', 'burst_unplug'):
            on = req_stats(res, accel, 'on', m)[0]
            off = req_stats(res, accel, 'off', m)[0]
            if on and off:
                out.append((on['median'] <= 1.5 * off['median'],
                            f'{accel}: {m} on/off = {ratio(on, off)} '
                            '(at most 1.5)'))
            upon = req_stats(res, accel, 'up-on', m)[0]
            if accel == 'kvm' and on and upon:
                out.append((on['median'] <= 2 * upon['median'],
                            f'kvm: {m} patched on / upstream on = '
                            f'{ratio(on, upon)} (at most 2; else report why)'))
    del lab
    return out


def write(res, stem):
    made, chart_errors = charts(res, stem)
    lab = labels(res)
    ks = keys(res)
    m = res['meta']
    L = []
    L.append(f'# virtio-mem dynamic-memslots benchmarks: {m["date"]}, '
             f'{m["host"]}')
    L.append('')
    L.append('Made by `make bench` (bench/run.py; raw data in '
             f'`{os.path.basename(stem)}.json`, charts beside this file). '
             'Every figure is the median of the runs with min – max in '
             'brackets; host kernel memory is `VmallocUsed` of '
             '/proc/meminfo, taken once it is stable.')
    L.append('')
    L += table(['', ''], [
        ['host', f'{m["host"]}, {m["cores"]} cores, '
                 f'{fmt_bytes(m["mem_total"])} RAM, {m["cpu"]}'],
        ['kernel', f'{m["kernel"]} (KVM modules: {m["kvm_modules"]}; '
                   f'KVM {m.get("kvm", "?")})'],
        ['runs', f'{m["runs"]} per figure'],
        ['total time', f'{m.get("seconds", 0) / 60:.1f} min (' + ', '.join(
            f'{k} {v:.0f} s' for k, v in res.get('times', {}).items()) + ')'],
        ['host metadata per 4 KiB page (boot RAM)',
         f'{m.get("meta_per_page", 0):.2f} bytes'],
    ])
    L.append('')
    L += table(['config', 'binary', 'version', 'virtio-mem properties'], [
        [c['label'], f'`{os.path.relpath(c["binary"], lib.ROOT)}`',
         c['version'], 'unplugged-inaccessible=on' + (
             '' if c['dynamic'] is None else
             f',dynamic-memslots={"on" if c["dynamic"] else "off"}')]
        for c in m['configs']])
    L.append('')

    L.append('## Headline figures')
    L.append('')
    L += table(['what', 'figure'], headline(res))
    L.append('')
    tg = targets(res)
    if tg:
        L.append('## Targets')
        L.append('')
        L.append('Targets of the issue: idle and plugged cost equal to '
                 'upstream 10.0 on or better; plug/unplug with on at most '
                 '1.5x off; on KVM, with on at most 2x upstream 10.0 on. '
                 'Note: on KVM a plug or unplug that maps or unmaps a memslot '
                 'pays KVM for creating/freeing that memslot (zeroing ~10 '
                 'bytes of metadata per 4 KiB, ~10 MiB for a 4 GiB memslot, '
                 'plus the slot update); with off the memslot exists from the '
                 'start, so no on/off ratio near 1 is possible there: compare '
                 'with upstream 10.0 on, which does the same work.')
        L.append('')
        for ok, text in tg:
            L.append(f'- {"PASS" if ok else "MISS"}: {text}')
        L.append('')

    # 1
    sizes = sizes_of(res, 'idle')
    if sizes:
        L.append('## 1. Idle cost: paused KVM VM, nothing plugged')
        L.append('')
        L.append('`-accel kvm -S -cpu qemu64,host-phys-bits=on -m 1G,maxmem=... '
                 '-object memory-backend-ram,size=S,reserve=off -device '
                 'virtio-mem-pci,requested-size=0,...`. Memory is over a VM of '
                 'the same binary without the device (that VM: ' + ', '.join(
                     f'{lab[k]} ' + cell(summary(
                         r.get('vmalloc') for r in
                         res['idle'].get(k, {}).get('0', [])), fmt_bytes, True)
                     for k in ks) + ').')
        L.append('')
        if 'idle-memory' in made:
            L.append(f'![idle memory]({made["idle-memory"]})')
            L.append('')
        L.append('Host kernel memory:')
        L.append('')
        rows, rrows, srows, errs = [], [], [], []
        for k in ks:
            row, rrow, srow = [lab[k]], [lab[k]], [lab[k]]
            for s in sizes:
                mem, st, e = idle_stats(res, k, s)
                miss = 'not started*' if e and e.startswith(
                    'not started by the benchmark') else 'failed'
                row.append(cell(mem, fmt_bytes, True) if mem else miss)
                srow.append(cell(st, fmt_secs) if st else miss)
                stk = idle_stats(res, 'stock', s)[0]
                upo = idle_stats(res, 'up-on', s)[0]
                rrow.append(f'{ratio(mem, stk, MiB)} / {ratio(mem, upo, MiB)}'
                            if mem else '-')
                if e:
                    errs.append(f'- {lab[k]}, {fmt_size(s)}: {e}')
            rows.append(row)
            rrows.append(rrow)
            srows.append(srow)
        head = ['config'] + [fmt_size(s) for s in sizes]
        L += table(head, rows)
        L.append('')
        L.append('Ratios of the memory medians: against stock 7.2 / against '
                 'upstream 10.0 on:')
        L.append('')
        L += table(head, rrows)
        L.append('')
        L.append('Start-up, exec to QMP ready:')
        L.append('')
        if 'idle-startup' in made:
            L.append(f'![idle start-up]({made["idle-startup"]})')
            L.append('')
        L += table(head, srows)
        L.append('')
        if errs:
            L.append('Configurations that did not start (each is a result; '
                     '* = not started by the benchmark\'s memory guard):')
            L.append('')
            L += sorted(set(errs))
            L.append('')
        L.append('/proc/vmallocinfo by caller, 1 TiB device (growth over the '
                 'host before the VM started, first successful run, callers '
                 'of 1 MiB or more):')
        L.append('')
        crow = []
        for k in ks:
            rows1 = res['idle'].get(k, {}).get(str(TiB), [])
            ok = next((r for r in rows1 if 'callers' in r), None)
            if ok:
                top = sorted(ok['callers'].items(), key=lambda x: -x[1])[:5]
                crow.append([lab[k], ', '.join(
                    f'`{c}` {fmt_bytes(v, True)}' for c, v in top) or
                    '(none over 1 MiB)'])
            else:
                crow.append([lab[k], 'failed'])
        L += table(['config', 'callers'], crow)
        L.append('')

    # 2
    psizes = sorted(int(n) for n in res.get('limit', {}) if int(n))
    if res.get('plugged'):
        L.append('## 2. Plugged cost: 1 TiB device, paused KVM VM')
        L.append('')
        L.append('Memory plugged through the qtest virtio-mem driver '
                 '(`-qtest` beside `-accel kvm -S`), in steps on one VM per run; '
                 'memory over the no-device VM of item 1. The limit is the '
                 'same amount of ordinary boot RAM (`-m 1G+N` over `-m 1G`, no '
                 'device), measured in this run.')
        L.append('')
        if 'plugged' in made:
            L.append(f'![plugged]({made["plugged"]})')
            L.append('')
        head = ['config'] + ['0 (idle)'] + [f'{n // GiB} GiB' for n in psizes]
        rows, rrows, errs = [], [], []
        lim_row = ['limit (boot RAM)', '0'] + [
            cell(limit_stats(res, n), fmt_bytes, True) for n in psizes]
        for k in ks:
            row, rrow = [lab[k]], [lab[k], '-']
            s0, e = plugged_stats(res, k, 0)
            row.append(cell(s0, fmt_bytes, True) if s0 else 'failed')
            for n in psizes:
                s, e = plugged_stats(res, k, n)
                row.append(cell(s, fmt_bytes, True) if s else 'failed')
                rrow.append(
                    f'{ratio(s, limit_stats(res, n), MiB)} / '
                    f'{ratio(s, plugged_stats(res, "stock", n)[0], MiB)} / '
                    f'{ratio(s, plugged_stats(res, "up-on", n)[0], MiB)}')
            if e:
                errs.append(f'- {lab[k]}: {e}')
            rows.append(row)
            rrows.append(rrow)
        L += table(head, rows + [lim_row])
        L.append('')
        L.append('Ratios: against the limit / against stock 7.2 / against '
                 'upstream 10.0 on:')
        L.append('')
        L += table(head, rrows)
        L.append('')
        if errs:
            L += errs
            L.append('')

    # 3
    if res.get('requests'):
        L.append('## 3. QEMU-side request cost (qtest virtio-mem driver, no guest)')
        L.append('')
        L.append('1 TiB device, requested-size 1 TiB, block size 2 MiB, one '
                 'VM per configuration and accelerator, runs are repetitions '
                 'in it. Times are wall-clock in the driver: from writing the '
                 'request to seeing it in the used ring, so each includes the '
                 'driver\'s qtest round trips (the `STATE` request, which '
                 'changes nothing, shows that floor). plug/unplug 1 GiB: one '
                 'request of 512 blocks at the device start (with on: maps / '
                 'unmaps memslot 0). Bursts: 512 one-block requests, 64 queued '
                 'per notification. Transaction: one write to the host '
                 'bridge\'s PAM0 register (one memory transaction that '
                 'changes 64 KiB at 0xf0000), with nothing plugged and with '
                 'one block plugged in each 4 GiB of the device (256 aliases '
                 'mapped with on).')
        L.append('')
        metrics = [('state', 'STATE (floor)'), ('plug_1g', 'plug 1 GiB'),
                   ('unplug_1g', 'unplug 1 GiB'),
                   ('burst_plug', 'plug burst 512x2 MiB'),
                   ('burst_unplug', 'unplug burst 512x2 MiB'),
                   ('txn_0', 'transaction, nothing plugged'),
                   ('txn_256', 'transaction, 256 pieces plugged')]
        for accel, per in res['requests'].items():
            L.append(f'### {ACCEL_NAMES.get(accel, accel)}')
            L.append('')
            name = f'requests-{accel}'
            if name in made:
                L.append(f'![requests {accel}]({made[name]})')
                L.append('')
            head = ['config'] + [t for _, t in metrics]
            rows, rrows, errs = [], [], []
            for k in ks:
                row, rrow = [lab[k]], [lab[k]]
                for mt, _ in metrics:
                    s, e = req_stats(res, accel, k, mt)
                    row.append(cell(s, fmt_secs) if s else 'failed')
                    rrow.append(
                        f'{ratio(s, req_stats(res, accel, "off", mt)[0])} / '
                        f'{ratio(s, req_stats(res, accel, "stock", mt)[0])} / '
                        f'{ratio(s, req_stats(res, accel, "up-on", mt)[0])}')
                if per.get(k, {}).get('error'):
                    errs.append(f'- {lab[k]}: {per[k]["error"]}')
                rows.append(row)
                rrows.append(rrow)
            L += table(head, rows)
            L.append('')
            L.append('Ratios: against patched off / against stock 7.2 / '
                     'against upstream 10.0 on:')
            L.append('')
            L += table(head, rrows)
            L.append('')
            if errs:
                L.append('Did not run:')
                L.append('')
                L += errs
                L.append('')

    # 4
    if res.get('guest'):
        L.append('## 4. Guest-visible latency under TCG')
        L.append('')
        L.append(f'The test guest (tests/lib/vmguest.py: Debian kernel + '
                 f'busybox, `-m 2G`, q35, TCG) with a '
                 f'{fmt_size(GUEST_DEV_DEFAULT)} device; QMP `qom-set '
                 'requested-size` to N, then the guest\'s MemTotal is polled '
                 'over the command channel: first change, and MemTotal grown '
                 'by N (all plugged and onlined); then back to 0 and MemTotal '
                 'back (unplug). Runs are repetitions in one booted guest.')
        L.append('')
        if 'guest' in made:
            L.append(f'![guest latency]({made["guest"]})')
            L.append('')
        gsizes = sorted({int(s) for v in res['guest'].values()
                         for s in v.get('sizes', {})})
        head = ['config', 'boot']
        for s in gsizes:
            head += [f'{s // GiB} GiB first change', f'{s // GiB} GiB all',
                     f'{s // GiB} GiB unplug']
        rows, errs = [], []
        for k in ks:
            g = res['guest'].get(k)
            if g is None:
                continue
            row = [lab[k], fmt_secs(g.get('boot'))]
            for s in gsizes:
                for mt in ('first', 'full', 'unplug'):
                    st, _ = guest_stats(res, k, s, mt)
                    row.append(cell(st, fmt_secs) if st else 'failed')
            if g.get('error'):
                errs.append(f'- {lab[k]}: {g["error"]}')
            rows.append(row)
        L += table(head, rows)
        L.append('')
        if errs:
            L += errs
            L.append('')
    if chart_errors or res.get('crashed'):
        L.append('## Problems of this run')
        L.append('')
        for e in chart_errors:
            L.append(f'- chart {e}')
        for k, v in res.get('crashed', {}).items():
            L.append(f'- section {k} crashed: `{v.strip().splitlines()[-1]}`')
        L.append('')
    path = stem + '.md'
    with open(path, 'w') as f:
        f.write('\n'.join(L))
    return path


GUEST_DEV_DEFAULT = 1 * TiB
