"""Markdown report and gnuplot charts of a bench/run.py result (JSON)."""

import math
import os
import statistics
import shutil
import subprocess
import tempfile

import lib
from lib import GiB, MiB, TiB, fmt_bytes, fmt_secs, fmt_size, summary

ACCEL_NAMES = {'qtest': '-accel qtest', 'tcg-paused': 'paused TCG VM (-accel tcg -S)',
               'kvm': 'paused KVM VM (-accel kvm -S)'}
ORDER = ['stock', 'base', 'off', 'on', 'up-off', 'up-on', 'extra-off',
         'extra-on']
COLORS = {'stock': '#555555', 'off': '#d62728', 'on': '#2ca02c',
          'up-off': '#ff7f0e', 'up-on': '#1f77b4', 'limit': '#9467bd',
          'extra-off': '#e377c2', 'extra-on': '#8c564b', 'base': '#7f7f7f'}


def labels(res):
    return {c['key']: c['label'] for c in res['meta']['configs']}


def keys(res, base=False):
    """The configurations of the run in report order; unpatched 7.2 of the
    same build ('base') only for the sections that measure it."""
    have = {c['key'] for c in res['meta']['configs']}
    return [k for k in ORDER if k in have and (base or k != 'base')]


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
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
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


MEMSLOT_TEXT = '1G'


def memslot_stats(res, key, n):
    """The memslot-size row of the plugged table (key 'auto' or '1G'): host
    kernel memory with n (0 or the memslot size) plugged, over patched on's
    no-device VM (over its own idle device when that did not run)."""
    ms = res.get('memslot', {})
    if n != ms.get('size', GiB) and (n or ms.get('error')):
        return '-', None
    if ms.get('error'):
        return None, ms['error']
    rows = ms.get('runs', {}).get(key, [])
    base = summary(r.get('vmalloc') for r in
                   res.get('idle', {}).get('on', {}).get('0', []))
    vals = [(r['plugged'] if n else r['vmalloc']) -
            (base['median'] if base else r['vmalloc'])
            for r in rows if 'plugged' in r]
    return summary(vals), first_error(rows)


def memslot_req_stats(res, key, metric):
    """memslot-size runs: request times (all repetitions of all runs) or,
    for 'plugged', the host kernel memory with 1 GiB plugged."""
    if metric == 'plugged':
        return memslot_stats(res, key, res.get('memslot', {}).get('size', GiB))
    rows = res.get('memslot', {}).get('runs', {}).get(key, [])
    return summary(v for r in rows for v in r.get(metric, [])), \
        first_error(rows)


MIG_METRICS = {
    'bytes': lambda r: r['bytes'], 'seconds': lambda r: r['seconds'],
    'zero': lambda r: r.get('ram', {}).get('duplicate'),
    'rss': lambda r: r['rss'], 'peak_rss': lambda r: r['peak_rss'],
    'rss_growth': lambda r: r['peak_rss'] - r['rss'],
    'shmem': lambda r: r['shmem_peak'],
}


def mig_stats(res, key, case, metric, section='migration'):
    """(summary, error) of a migration figure of res[section]; for bytes
    and seconds, a text when a run was cancelled (what it had sent by
    then)."""
    rows = res.get(section, {}).get(key, {}).get(case, [])
    done = [r for r in rows if 'error' not in r]
    cancelled = [r for r in done if 'cancelled' in r]
    if cancelled and metric in ('bytes', 'seconds', 'zero'):
        r = max(cancelled, key=lambda r: r['bytes'])
        return ((f'> {fmt_bytes(r["bytes"])}†' if metric == 'bytes' else
                 f'> {fmt_secs(r["cancelled"])}†' if metric == 'seconds' else
                 f'> {fmt_count(r.get("ram", {}).get("duplicate"))}†'),
                r.get('why') and 'cancelled: ' + r['why'])
    return summary(MIG_METRICS[metric](r) for r in done), first_error(rows)


def mig_sizes(res):
    """Device sizes of the idle migration cases (without the no-device)."""
    out = set()
    for per in res.get('migration', {}).values():
        out |= {int(c[5:]) for c in per if c.startswith('idle-')}
    return sorted(s for s in out if s)


def mig_over_base(res, key, case, metric, base_case='idle-0'):
    """A migration figure (peak_rss: a cancelled run's peak counts) over
    the median of the same configuration's base_case (the VM without the
    device); (None, why) when either is missing."""
    base, e0 = mig_stats(res, key, base_case, metric)
    rows = res.get('migration', {}).get(key, {}).get(case, [])
    if not isinstance(base, dict):
        return None, first_error(rows) or (
            e0 and f'{mig_case_name(base_case)}: {e0}')
    return summary(MIG_METRICS[metric](r) - base['median'] for r in rows
                   if 'error' not in r), first_error(rows)


def idle_cost_stats(res, key, size, metric):
    """(summary, error): VmRSS over the no-device VM (absolute for size 0)
    or exec -> QMP ready."""
    per = res.get('idle_cost', {}).get(key, {})
    rows = per.get(str(size), [])
    vals = [r[metric] for r in rows if metric in r]
    if metric == 'rss' and size:
        base = summary(r.get('rss') for r in per.get('0', []))
        vals = [v - base['median'] for v in vals] if base else []
    return summary(vals), first_error(rows)


def fmt_count(n):
    if n is None:
        return '-'
    for unit, size in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
        if n >= size:
            return f'{n / size:.3g}{unit}'
    return f'{n:.0f}'


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

    def size_plot(name, title, ylabel, sizes, fn, unit=1, shift=0,
                  goal=None):
        """One line per config over the device sizes: median of fn(k, s)
        (a summary or None) / unit + shift, with min-max bars; log-log;
        goal: (value, title) drawn as a dashed line."""
        datas, lines = {}, []
        for k in keys(res):
            rows = []
            for sz in sizes:
                st = fn(k, sz)
                if isinstance(st, dict):
                    rows.append(f'{sz / GiB} ' + ' '.join(
                        str(max(st[q], 0) / unit + shift)
                        for q in ('median', 'min', 'max')))
            if rows:
                datas[f'{name}-{k}.dat'] = '\n'.join(rows) + '\n'
                lines.append(f'"{name}-{k}.dat" using 1:2:3:4 with '
                             f'yerrorlines title "{lab[k]}" '
                             f'lc rgb "{COLORS[k]}" lw 2')
        if not lines:
            return
        if goal:
            lines.append(f'{goal[0] / unit + shift} with lines title '
                         f'"{goal[1]}" lc rgb "black" dt 2')
        xt = ', '.join(f'"{fmt_size(sz)}" {sz / GiB}' for sz in sizes)
        plot(name, f'set title "{title}"\nset logscale xy\n'
             f'set xtics ({xt})\nset xlabel "virtio-mem device size"\n'
             f'set ylabel "{ylabel}"\nplot ' + ', '.join(lines) + '\n', datas)

    # 1. idle memory and start-up vs device size
    sizes = sizes_of(res, 'idle')
    size_plot('idle-memory',
              'Idle paused KVM VM: host kernel memory (VmallocUsed over a '
              'no-device VM)\\nvirtio-mem device, nothing plugged; missing '
              'points: did not start', 'MiB + 1 (log)', sizes,
              lambda k, sz: idle_stats(res, k, sz)[0], MiB, 1)
    size_plot('idle-startup',
              'Idle paused KVM VM: time from exec to QMP ready (median, '
              'min-max)', 'seconds (log)', sizes,
              lambda k, sz: idle_stats(res, k, sz)[1])

    # 5. migration stream and time vs idle device size
    msizes = mig_sizes(res)
    size_plot('migration-bytes',
              'Migration of a paused VM with an idle virtio-mem device: '
              'stream bytes\\n(median, min-max; missing points: cancelled '
              'or not started)', 'MiB (log)', msizes,
              lambda k, sz: mig_stats(res, k, f'idle-{sz}', 'bytes')[0], MiB)
    size_plot('migration-time',
              'Migration of a paused VM with an idle virtio-mem device: '
              'time (median, min-max)', 'seconds (log)', msizes,
              lambda k, sz: mig_stats(res, k, f'idle-{sz}', 'seconds')[0])

    # 6. idle QEMU cost vs device size
    csizes = sizes_of(res, 'idle_cost')
    size_plot('idle-cost-rss',
              'Idle paused VM: QEMU\'s own VmRSS over the VM without the '
              'device (median, min-max)', 'MiB + 1 (log)', csizes,
              lambda k, sz: idle_cost_stats(res, k, sz, 'rss')[0], MiB, 1,
              (GOAL_RSS, 'goal for 16 TiB: +64 MiB'))
    size_plot('idle-cost-startup',
              'Idle paused VM: exec to QMP ready (median, min-max)',
              'seconds (log)', csizes,
              lambda k, sz: idle_cost_stats(res, k, sz, 'start')[0])

    size_plot('idle-cost-migration-rss',
              'Migration of a paused VM with an idle device: the source\'s '
              'peak VmRSS over the VM without the device\\n(median, '
              'min-max; issue 12\'s goal: at most +64 MiB)', 'MiB + 1 (log)',
              msizes, lambda k, sz: mig_over_base(res, k, f'idle-{sz}',
                                                  'peak_rss')[0], MiB, 1,
              (GOAL_RSS, 'goal: +64 MiB'))

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
        rk = [k for k in keys(res, True)
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

def shown_path(path):
    """A binary's path: relative to the project when inside it."""
    rel = os.path.relpath(path, lib.ROOT)
    return path if rel.startswith('..') else rel


def table(head, rows):
    out = ['| ' + ' | '.join(head) + ' |',
           '|' + '|'.join('---' for _ in head) + '|']
    out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return out


def sbytes(v):
    return fmt_bytes(v, True)


def miss_text(e):
    """What a table shows where a figure is missing."""
    for start, text in (('not started by the benchmark', 'not started*'),
                        ('not supported', 'not supported'),
                        ('not run', 'not run')):
        if e and e.startswith(start):
            return text
    return 'failed'


def config_tables(L, head, rows_of, cols, get, fmt, refs=(), ref_text='',
                  floor=0, extra_rows=()):
    """Append to L a table with a row per (key, name) of rows_of and a
    column per (col, name) of cols, each cell get(key, col) -> (summary, a
    ready text, or None; error), formatted by fmt (or fmt[col]); then, if
    refs are given, the table of the ratios of the medians against each
    ref(col) -> summary, introduced by ref_text.  Returns the errors as
    '- name[, columns]: error' lines."""
    rows, rrows, errs = [], [], {}
    for k, name in rows_of:
        row, rrow = [name], [name]
        for c, cname in cols:
            s, e = get(k, c)
            f = fmt[c] if isinstance(fmt, dict) else fmt
            if isinstance(s, str):
                row.append(s)
            else:
                row.append(cell(s, f) if s else miss_text(e))
            rats = [ratio(s, ref(c), floor) for ref in refs
                    if isinstance(s, dict)]
            rrow.append(' / '.join(rats) if set(rats) - {'-'} else '-')
            if e:
                errs.setdefault((name, e), []).append(cname)
        rows.append(row)
        rrows.append(rrow)
    L += table(head, rows + list(extra_rows))
    L.append('')
    if refs:
        L.append(ref_text)
        L.append('')
        L += table(head, rrows)
        L.append('')
    return [f'- {name}: {e}' if len(where) == len(cols) else
            f'- {name}, {", ".join(where)}: {e}'
            for (name, e), where in errs.items()]


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
    ms1 = memslot_stats(res, '1G', GiB)
    lim1 = limit_stats(res, GiB)
    if res.get('memslot'):
        out.append(('1 TiB device, 1 GiB plugged, patched on with '
                    'memslot-size=1G: cost / limit',
                    ratio(ms1[0], lim1) if isinstance(ms1[0], dict) and lim1
                    else miss_text(ms1[1])))
    mig = [c for c in ('idle-1099511627776', 'idle-17592186044416')
           if c in mig_cases_of(res)]
    for c in mig:
        out.append((f'Migration, paused VM, {mig_case_name(c)} device: '
                    'stream bytes, time',
                    ', '.join(f'{lab[k]} ' + mig_cell(res, k, c)
                              for k in keys(res))))
    if 16 * TiB in sizes_of(res, 'idle_cost'):
        out.append(('16 TiB device, idle: QEMU VmRSS over no device',
                    ', '.join(f'{lab[k]} ' + (
                        sbytes(st['median']) if st else miss_text(e))
                        for k in keys(res) for st, e in
                        [idle_cost_stats(res, k, 16 * TiB, 'rss')])))
    c = f'idle-{16 * TiB}'
    if c in mig_cases_of(res):
        out.append(('Migration, idle 16 TiB device: the source\'s peak '
                    'VmRSS over no device',
                    ', '.join(f'{lab[k]} ' + (
                        sbytes(st['median']) if st else miss_text(e))
                        for k in keys(res) for st, e in
                        [mig_over_base(res, k, c, 'peak_rss')])))
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


def mig_cell(res, k, c):
    """'bytes / time' of one migration case, medians."""
    parts = []
    for m, f in (('bytes', fmt_bytes), ('seconds', fmt_secs)):
        st, e = mig_stats(res, k, c, m)
        parts.append(st if isinstance(st, str) else
                     f(st['median']) if st else miss_text(e))
    return ' / '.join(parts)


def mig_targets(res):
    """Issue 10: on's stream within 1% of off and of upstream 10.0 on,
    memfd source growth under 64 MiB."""
    out = []
    for c in mig_cases_of(res):
        on = mig_stats(res, 'on', c, 'bytes')
        for ref in ('off', 'up-on'):
            other = mig_stats(res, ref, c, 'bytes')[0]
            if isinstance(other, dict) and on[0] is not None:
                ok = (isinstance(on[0], dict) and
                      on[0]['median'] <= 1.01 * other['median'])
                out.append((ok, f'migration, {mig_case_name(c)}: patched on '
                                f'{mig_cell(res, "on", c)}, {ref} '
                                f'{mig_cell(res, ref, c)} (stream at most '
                                '+1%)'))
    for m, what in (('rss_growth', 'source VmRSS'), ('shmem', 'host Shmem')):
        st = mig_stats(res, 'on', 'memfd', m)[0]
        if st:
            out.append((st['median'] < 64 * MiB,
                        f'migration, 8 GiB memfd idle: patched on {what} '
                        f'growth {sbytes(st["median"])} (below 64 MiB)'))
    return out


def memslot_targets(res):
    """Issue 11: the memslot-size=1G row."""
    out = []
    ms1, lim1 = memslot_stats(res, '1G', GiB)[0], limit_stats(res, GiB)
    if isinstance(ms1, dict) and lim1:
        out.append((ms1['median'] <= 1.05 * lim1['median'],
                    f'1 GiB plugged, memslot-size=1G: {sbytes(ms1["median"])}'
                    f' = {ratio(ms1, lim1)} x the limit (at most 1.05)'))
    for m in ('plug_1g', 'unplug_1g'):
        a = memslot_req_stats(res, '1G', m)[0]
        b = memslot_req_stats(res, 'auto', m)[0]
        if a and b:
            out.append((a['median'] <= 1.1 * b['median'],
                        f'{m} with memslot-size=1G / automatic = '
                        f'{ratio(a, b)} (no slower; 10% allowed for noise)'))
    return out


IDLE_GOAL_SIZE = 16 * TiB
GOAL_RSS = 64 * MiB         # issue 12: at most this over the VM without it


def verdict_word(ok):
    return {True: 'PASS', False: 'MISS', None: 'NOT MEASURED'}[ok]


def idle_cost_verdicts(res):
    """Issue 12's goals for patched on, computed from this run: [(True
    (met), False (missed) or None (not measured, with why), text)]; the
    text gives upstream 10.0 on's figure beside it."""
    if not (res.get('idle_cost') or res.get('migration')):
        return []
    out = []
    sz = IDLE_GOAL_SIZE

    def check(what, st, e, limit, goal, f, up):
        """Patched on's st (a summary, a text for a cancelled run, or
        None) against limit (None: the reference is missing); up: upstream
        10.0 on's figure, shown beside it."""
        if st is None or limit is None:
            out.append((None, f'{what}: not measured '
                              f'({e or "not in this run"})'))
            return
        val = st if isinstance(st, str) else f(st['median'])
        out.append((isinstance(st, dict) and st['median'] <= limit,
                    f'{what}: patched on {val} (goal: {goal})' +
                    (f'; upstream 10.0 on {f(up["median"])}'
                     if isinstance(up, dict) else '')))

    def med(st):
        return st['median'] if isinstance(st, dict) else None

    rss_goal = f'at most {sbytes(GOAL_RSS)}'
    rss, e = idle_cost_stats(res, 'on', sz, 'rss')
    check(f'idle {fmt_size(sz)} device, QEMU VmRSS over the VM without it',
          rss, e, GOAL_RSS, rss_goal, sbytes,
          idle_cost_stats(res, 'up-on', sz, 'rss')[0])
    st, e = idle_cost_stats(res, 'on', sz, 'start')
    st0, e0 = idle_cost_stats(res, 'on', 0, 'start')
    lim = med(st0) and 2 * med(st0) + 0.2
    check(f'idle {fmt_size(sz)} device, exec to QMP ready', st, e or e0,
          lim, f'at most 2x the VM without it ({fmt_secs(med(st0))}) + '
          f'0.2 s = {fmt_secs(lim)}', fmt_secs,
          idle_cost_stats(res, 'up-on', sz, 'start')[0])
    # Migration: idle 4 / 16 TiB against no device; 16 GiB plugged into
    # the largest device against the same VM with 16 GiB more boot RAM.
    cases = [(f'idle-{s}', 'idle-0') for s in (4 * TiB, 16 * TiB)]
    cases += [(c, 'bootram') for c in
              (mig_plugged_big(res) or [f'plugged-{IDLE_GOAL_SIZE}'])[-1:]]
    for case, base in cases:
        what = f'migration, {mig_case_name(case)}'
        t, e = mig_stats(res, 'on', case, 'seconds')
        t0, e0 = mig_stats(res, 'on', base, 'seconds')
        lim = med(t0) and 1.5 * med(t0)
        check(what + ', time', t, e or e0, lim,
              f'at most 1.5x {MIG_REF_NAMES[base]} ({fmt_secs(med(t0))}) '
              f'= {fmt_secs(lim)}', fmt_secs,
              mig_stats(res, 'up-on', case, 'seconds')[0])
        p, e = mig_over_base(res, 'on', case, 'peak_rss', base)
        check(f'{what}, source peak VmRSS over {MIG_REF_NAMES[base]}', p, e,
              GOAL_RSS, rss_goal, sbytes,
              mig_over_base(res, 'up-on', case, 'peak_rss', base)[0])
    return out


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
        for m in ('plug_x32', 'unplug_x32'):
            on = req_stats(res, accel, 'on', m)[0]
            upon = req_stats(res, accel, 'up-on', m)[0]
            if on and upon:
                out.append((on['median'] <= 1.1 * upon['median'],
                            f'{accel}: {m} patched on / upstream on = '
                            f'{ratio(on, upon)} (issue 17: at most 1.1)'))
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
    return (out + mig_targets(res) + memslot_targets(res) +
            idle_cost_verdicts(res))


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
        ['command', f'`{m.get("command", "bench/run.py")}`'],
        ['total time', f'{m.get("seconds", 0) / 60:.1f} min (' + ', '.join(
            f'{k} {v:.0f} s' for k, v in res.get('times', {}).items()) + ')'],
        ['host metadata per 4 KiB page (boot RAM)',
         f'{m.get("meta_per_page", 0):.2f} bytes'],
    ])
    L.append('')
    L += table(['config', 'binary', 'version', 'virtio-mem properties'], [
        [c['label'], f'`{shown_path(c["binary"])}`',
         c['version'] + (f' (file of {c["built"]})' if c.get('built')
                         else ''), 'unplugged-inaccessible=on' + (
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
        L.append('Targets of the issues: idle and plugged cost equal to '
                 'upstream 10.0 on or better; plug/unplug with on at most '
                 '1.5x off; on KVM, with on at most 2x upstream 10.0 on; '
                 'migration stream with on at most 1% over off and over '
                 'upstream 10.0 on, an idle memfd device growing neither the '
                 'source\'s RSS nor the host\'s Shmem by 64 MiB; 1 GiB '
                 'plugged with memslot-size=1G at most 1.05x the limit; '
                 'issue 12\'s idle QEMU cost goals (the last lines, '
                 'explained in section 6). '
                 'Note: on KVM a plug or unplug that maps or unmaps a memslot '
                 'pays KVM for creating/freeing that memslot (zeroing ~10 '
                 'bytes of metadata per 4 KiB, ~10 MiB for a 4 GiB memslot, '
                 'plus the slot update); with off the memslot exists from the '
                 'start, so no on/off ratio near 1 is possible there: compare '
                 'with upstream 10.0 on, which does the same work.')
        L.append('')
        for ok, text in tg:
            L.append(f'- {verdict_word(ok)}: {text}')
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
        cols = [(sz, fmt_size(sz)) for sz in sizes]
        head = ['config'] + [c[1] for c in cols]
        rows_of = [(k, lab[k]) for k in ks]

        def mem_of(k, sz):
            mem, _, e = idle_stats(res, k, sz)
            return mem, e
        errs = config_tables(
            L, head, rows_of, cols, mem_of, sbytes,
            [lambda sz: idle_stats(res, 'stock', sz)[0],
             lambda sz: idle_stats(res, 'up-on', sz)[0]],
            'Ratios of the memory medians: against stock 7.2 / against '
            'upstream 10.0 on:', MiB)
        L.append('Start-up, exec to QMP ready:')
        L.append('')
        if 'idle-startup' in made:
            L.append(f'![idle start-up]({made["idle-startup"]})')
            L.append('')
        config_tables(L, head, rows_of, cols,
                      lambda k, sz: idle_stats(res, k, sz)[1:], fmt_secs)
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
    psizes = sorted({int(n) for n in res.get('limit', {}) if int(n)} |
                    ({res['memslot'].get('size', GiB)} if 'memslot' in res
                     else set()))
    if res.get('plugged') or res.get('memslot'):
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
        cols = [(0, '0 (idle)')] + [(n, f'{n // GiB} GiB') for n in psizes]
        head = ['config'] + [c[1] for c in cols]
        rows_of = [(k, lab[k]) for k in ks] if res.get('plugged') else []
        if 'memslot' in res:
            rows_of.append(('memslot', f'{lab.get("on", "on")}, '
                            'memslot-size=1G'))

        def get(k, n):
            if k == 'memslot':
                return memslot_stats(res, '1G', n)
            return plugged_stats(res, k, n)

        def ref(fn):
            return lambda n: fn(n) if n else None
        lim_row = ['limit (boot RAM)', '0'] + [
            cell(limit_stats(res, n), sbytes) for n in psizes]
        errs = config_tables(
            L, head, rows_of, cols, get, sbytes,
            [ref(lambda n: limit_stats(res, n)),
             ref(lambda n: plugged_stats(res, 'stock', n)[0]),
             ref(lambda n: plugged_stats(res, 'up-on', n)[0])],
            'Ratios: against the limit / against stock 7.2 / against '
            'upstream 10.0 on:', MiB, [lim_row])
        if errs:
            L += errs
            L.append('')
        if res.get('memslot', {}).get('runs'):
            L.append('The memslot-size=1G row: its own paused KVM VM '
                     f'(`memslot-size={MEMSLOT_TEXT}` beside '
                     '`dynamic-memslots=on`), 1 GiB plugged at the device '
                     'start. The cost of a 1 GiB plug / unplug request that '
                     'maps / unmaps one memslot there (1 GiB memslot) and '
                     'with the automatic size (4 GiB memslots for a 1 TiB '
                     'device), through the qtest driver; ratios against the '
                     'automatic size:')
            L.append('')
            mcols = [('plug_1g', 'plug 1 GiB'), ('unplug_1g', 'unplug 1 GiB'),
                     ('plugged', '1 GiB plugged: host kernel memory')]
            config_tables(
                L, ['memslot size'] + [c[1] for c in mcols],
                [('auto', 'automatic'), ('1G', 'memslot-size=1G')], mcols,
                lambda k, m: memslot_req_stats(res, k, m),
                {'plug_1g': fmt_secs, 'unplug_1g': fmt_secs,
                 'plugged': sbytes},
                [lambda m: memslot_req_stats(res, 'auto', m)[0]],
                'Ratios against the automatic size:')

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
        L.append('The floor (the driver\'s round trip, a `STATE` request) '
                 'differs between QEMU instances, for the same binary too '
                 '(121 µs and 474 µs for two VMs of the patched binary in '
                 'one run): "net" is a request\'s time less the `STATE` '
                 'request sent just before it, median of the pairs, and is '
                 'what is left of a plug or unplug next to the floor. Its '
                 'spread is that of the floor (hundreds of µs under TCG), '
                 'far more than the work: "32 queued" times 32 requests of '
                 '1 GiB each (32 GiB at 1 GiB steps; with on: 32 memslots '
                 'mapped, then unmapped) written to the queue first, from '
                 'the notification to the last completion, per request. '
                 'That compares the work; the issue-17 goal is on it.')
        L.append('')
        metrics = [('state', 'STATE (floor)'), ('plug_1g', 'plug 1 GiB'),
                   ('unplug_1g', 'unplug 1 GiB'),
                   ('plug_net', 'plug 1 GiB net'),
                   ('unplug_net', 'unplug 1 GiB net'),
                   ('plug_x32', 'plug 1 GiB, 32 queued'),
                   ('unplug_x32', 'unplug 1 GiB, 32 queued'),
                   ('burst_plug', 'plug burst 512x2 MiB'),
                   ('burst_unplug', 'unplug burst 512x2 MiB'),
                   ('txn_0', 'transaction, nothing plugged'),
                   ('txn_256', 'transaction, 256 pieces plugged')]
        for accel in res['requests']:
            L.append(f'### {ACCEL_NAMES.get(accel, accel)}')
            L.append('')
            name = f'requests-{accel}'
            if name in made:
                L.append(f'![requests {accel}]({made[name]})')
                L.append('')
            head = ['config'] + [t for _, t in metrics]
            errs = config_tables(
                L, head, [(k, lab[k]) for k in keys(res, True)], metrics,
                lambda k, mt, a=accel: req_stats(res, a, k, mt), fmt_secs,
                [lambda mt, a=accel, r=r: req_stats(res, a, r, mt)[0]
                 for r in ('off', 'stock', 'base', 'up-on')],
                'Ratios: against patched off / against stock 7.2 / '
                'against unpatched 7.2 of the same build / '
                'against upstream 10.0 on:')
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
    L += migration_section(res, made)
    L += kvm_migration_section(res)
    L += vhost_section(res)
    L += prealloc_section(res)
    L += tcg_sections(res)
    L += idle_cost_section(res, made)
    replaced = m.get('replaced', [])
    if chart_errors or res.get('crashed') or replaced:
        L.append('## Problems of this run')
        L.append('')
        for e in chart_errors:
            L.append(f'- chart {e}')
        L += [f'- {text}' for text in replaced]
        for k, v in res.get('crashed', {}).items():
            L.append(f'- section {k} crashed: `{v.strip().splitlines()[-1]}`')
        L.append('')
    path = stem + '.md'
    with open(path, 'w') as f:
        f.write('\n'.join(L))
    return path


GUEST_DEV_DEFAULT = 1 * TiB

MIG_CASE_NAMES = {'idle-0': 'no device',
                  'bootram': '2+16 GiB boot RAM, no device',
                  'plugged': '16 GiB plugged into 1 TiB',
                  'unplugged': '1 TiB, 4 GiB plugged then all unplugged',
                  'memfd': '8 GiB memfd, idle'}


# The references of item 6's migration rows: idle devices against the VM
# without them, plugged memory against the same amount of boot RAM.
MIG_REF_NAMES = {'idle-0': 'the VM without the device',
                 'bootram': 'the VM with 16 GiB more boot RAM instead'}
MIG_REF_SHORT = {'idle-0': 'no device', 'bootram': '2+16 GiB boot RAM'}


def mig_case_name(case):
    if case in MIG_CASE_NAMES:
        return MIG_CASE_NAMES[case]
    if case.startswith('plugged-'):
        return f'16 GiB plugged into {fmt_size(int(case[8:]))}'
    return f'idle {fmt_size(int(case[5:]))}'


def mig_plugged_big(res):
    """The cases '16 GiB plugged into S' (S > 1 TiB) of this run."""
    have = {c for per in res.get('migration', {}).values() for c in per
            if c.startswith('plugged-')}
    return sorted(have, key=lambda c: int(c[8:]))


def mig_cases_of(res):
    """The migration cases of this run, in a fixed order."""
    have = {c for per in res.get('migration', {}).values() for c in per}
    order = (['idle-0'] + [f'idle-{sz}' for sz in mig_sizes(res)] +
             ['bootram', 'plugged'] + mig_plugged_big(res) +
             ['unplugged', 'memfd'])
    return [c for c in order if c in have]


def chart(made, name, L):
    if name in made:
        L.append(f'![{name}]({made[name]})')
        L.append('')


def migration_section(res, made):
    """## 5: stream bytes, time, zero pages, memfd RSS / Shmem."""
    cases = mig_cases_of(res)
    if not cases:
        return []
    lab, ks = labels(res), keys(res)
    rows_of = [(k, lab[k]) for k in ks]
    timeout = res['meta'].get('migration_timeout')
    L = ['## 5. Migration of a paused VM with an idle or unplugged device', '']
    L.append('`-accel tcg -S -cpu qemu64,phys-bits=48` (the same for every '
             'binary) `-m 2G,maxmem=2G+S`, one `virtio-mem-pci` on '
             '`memory-backend-ram,reserve=off` with `requested-size=0` '
             '(nothing ever plugged) unless said; `migrate` to a unix socket '
             'whose reader counts the bytes (nothing stored), '
             '`max-bandwidth` 64 GiB/s; time is QEMU\'s `total-time`. '
             '"16 GiB plugged into S": 16 GiB plugged into a device of size '
             'S through the qtest virtio-mem driver (`-qtest` socket beside '
             'the paused TCG VM: Debian\'s builds have no qtest '
             'accelerator); "2+16 GiB boot RAM": the VM without a device '
             'and with `-m 18G` (what 16 GiB of ordinary RAM costs a '
             'migration); "4 GiB plugged then all unplugged": a 1 TiB '
             'device, 4 GiB plugged and unplugged again, requested-size back '
             'to 0. † = '
             f'cancelled after {timeout or 0:.0f} s (`--migration-timeout`): '
             'what it had sent by then.')
    L.append('')
    cols = [(c, mig_case_name(c)) for c in cases]
    head = ['config'] + [c[1] for c in cols]
    errs = []
    for m, what, f in (('bytes', 'stream bytes', fmt_bytes),
                       ('seconds', 'times', fmt_secs)):
        chart(made, 'migration-' + ('time' if m == 'seconds' else m), L)
        L += [f'{what.capitalize()}:', '']
        errs = config_tables(
            L, head, rows_of, cols,
            lambda k, c, m=m: mig_stats(res, k, c, m), f,
            [lambda c, r=r, m=m: mig_stats(res, r, c, m)[0]
             for r in ('off', 'up-on')],
            f'Ratios of the {what}: against patched off / against '
            'upstream 10.0 on:')
    L += ['Pages sent as zero pages (QEMU\'s `ram.duplicate`):', '']
    config_tables(L, head, rows_of, cols,
                  lambda k, c: mig_stats(res, k, c, 'zero'), fmt_count)
    if 'memfd' in cases:
        L += ['8 GiB idle device on `memory-backend-memfd`: the source '
              'QEMU\'s VmRSS before the migration, its peak during it '
              '(VmHWM, reset at the start), and the host\'s `Shmem` growth '
              '(peak during the migration; reading unplugged memfd memory '
              'allocates it; host-wide, so other jobs on the host can add '
              'to it):', '']
        mcols = [('rss', 'VmRSS before'), ('peak_rss', 'peak VmRSS'),
                 ('rss_growth', 'VmRSS growth'), ('shmem', 'host Shmem growth')]
        config_tables(
            L, ['config'] + [c[1] for c in mcols], rows_of, mcols,
            lambda k, m: mig_stats(res, k, 'memfd', m),
            {'rss': fmt_bytes, 'peak_rss': fmt_bytes, 'rss_growth': sbytes,
             'shmem': sbytes})
    if errs:
        L += ['Did not run (* = not started by the benchmark\'s memory '
              'guard):', ''] + errs + ['']
    return L


def idle_cost_section(res, made):
    """## 6: issue 12's verdicts; QEMU's own VmRSS and start-up with an
    idle device; migration time and the source's peak VmRSS with an idle
    4 / 16 TiB device and with 16 GiB plugged (cases of item 5)."""
    sizes = sizes_of(res, 'idle_cost')
    mcases = [c for c in mig_cases_of(res)
              if c in ('idle-0', 'bootram') or c.startswith('plugged') or
              (c.startswith('idle-') and int(c[5:]) >= 4 * TiB)]
    if not res.get('idle_cost') and len(mcases) < 2:
        return []
    lab, ks = labels(res), keys(res)
    rows_of = [(k, lab[k]) for k in ks]
    accel = res['meta'].get('idle_cost_accel', 'kvm')
    L = ['## 6. Idle QEMU cost: QEMU\'s own memory, start-up, migration', '']
    L.append('Issue 12\'s goals for patched on (an idle device costs QEMU '
             'itself nothing; each line computed from the figures below):')
    L.append('')
    L += [f'- {verdict_word(ok)}: {text}'
          for ok, text in idle_cost_verdicts(res)]
    L.append('')
    if res.get('idle_cost'):
        L += idle_cost_tables(res, made, sizes, rows_of, accel)
    if len(mcases) >= 2:
        L += idle_cost_migration(res, made, mcases, rows_of)
    return L


def idle_cost_tables(res, made, sizes, rows_of, accel):
    """Item 6's VmRSS and exec -> QMP ready tables."""
    L = [f'### Start-up: VmRSS and QMP ready, {ACCEL_NAMES.get(accel, accel)}',
         '']
    L.append(f'A {ACCEL_NAMES.get(accel, accel)}'
             + ('' if accel == 'kvm' else ' (/dev/kvm was unusable: '
                f'{res["meta"].get("kvm")})') +
             ' with one idle device (nothing plugged) of each size, '
             '`-m 1G,maxmem=...`: QEMU\'s own VmRSS (/proc/PID/status, once '
             'stable) over the same binary\'s VM without the device, and '
             'exec to QMP ready. The "no device" column is that VM\'s '
             'absolute figure.')
    L.append('')
    chart(made, 'idle-cost-rss', L)
    cols = [(0, 'no device')] + [(sz, fmt_size(sz)) for sz in sizes]
    head = ['config'] + [c[1] for c in cols]
    L += ['VmRSS:', '']
    errs = config_tables(
        L, head, rows_of, cols,
        lambda k, sz: idle_cost_stats(res, k, sz, 'rss'),
        {c: (fmt_bytes if not c else sbytes) for c, _ in cols},
        [lambda sz, r=r: idle_cost_stats(res, r, sz, 'rss')[0]
         for r in ('off', 'up-on')],
        'Ratios of the VmRSS growth: against patched off / against '
        'upstream 10.0 on:', MiB)
    chart(made, 'idle-cost-startup', L)
    L += ['Exec to QMP ready:', '']
    config_tables(L, head, rows_of, cols,
                  lambda k, sz: idle_cost_stats(res, k, sz, 'start'),
                  fmt_secs)
    if errs:
        L += ['Did not run (* = not started by the benchmark\'s memory '
              'guard):', ''] + sorted(set(errs)) + ['']
    return L


def idle_cost_migration(res, made, cases, rows_of):
    """Item 6's migration rows: time, the source's peak VmRSS over its
    reference (the VM without the device; for plugged memory the VM with
    as much more boot RAM) and its growth during the migration."""
    L = ['### Migration: time and the source\'s peak VmRSS', '']
    L.append('The paused TCG VM of section 5 (`-m 2G`), migrated to a '
             'byte-counting socket (so only the source QEMU is measured): '
             'without a device, with an idle device, with 16 GiB plugged '
             'into a device of the size named, and, as the reference for '
             'the plugged memory, without a device but with 16 GiB more boot '
             'RAM (`-m 18G`). Peak VmRSS is the source\'s VmHWM during the '
             'migration (reset at its start); over the reference: idle '
             'devices over the VM without the device, 16 GiB plugged over '
             'the VM with 2+16 GiB of boot RAM.')
    L.append('')
    chart(made, 'idle-cost-migration-rss', L)

    def base(c):
        return 'bootram' if c.startswith('plugged') else 'idle-0'
    cols = [(c, mig_case_name(c)) for c in cases]
    head = ['config'] + [c[1] for c in cols]
    L += ['Time (QEMU\'s `total-time`):', '']
    errs = config_tables(L, head, rows_of, cols,
                         lambda k, c: mig_stats(res, k, c, 'seconds'),
                         fmt_secs)

    def time_ratio(k, c):
        t, e = mig_stats(res, k, c, 'seconds')
        t0 = mig_stats(res, k, base(c), 'seconds')[0]
        return (ratio(t, t0) if isinstance(t, dict) else t), e
    rcols = [c for c in cols if c[0] not in ('idle-0', 'bootram')]
    L += ['Time over the reference of the same configuration (goal for '
          'patched on: at most 1.5):', '']
    config_tables(L, ['config'] + [c[1] for c in rcols], rows_of, rcols,
                  time_ratio, fmt_secs)
    pcols = [(c, name if c in ('idle-0', 'bootram') else
              f'{name}: over {MIG_REF_SHORT[base(c)]}') for c, name in cols]
    L += ['Source\'s peak VmRSS (absolute for the references; goal for '
          'patched on: at most +64 MiB over the reference):', '']

    def peak(k, c):
        if c in ('idle-0', 'bootram'):
            return mig_stats(res, k, c, 'peak_rss')
        return mig_over_base(res, k, c, 'peak_rss', base(c))
    config_tables(L, ['config'] + [c[1] for c in pcols], rows_of, pcols,
                  peak, {c: (fmt_bytes if c in ('idle-0', 'bootram')
                             else sbytes) for c, _ in pcols})
    L += ['Source\'s VmRSS growth during the migration (peak minus VmRSS '
          'before it: what the migration itself allocates):', '']
    config_tables(L, head, rows_of, cols,
                  lambda k, c: mig_stats(res, k, c, 'rss_growth'), sbytes)
    if errs:
        L += ['Did not run (* = not started by the benchmark\'s memory '
              'guard):', ''] + sorted(set(errs)) + ['']
    return L



def kvm_migration_section(res):
    """## 5b: paused KVM VM, partly plugged memslots."""
    per = res.get('kvm-migration', {})
    if not per:
        return []
    cases = sorted({c for v in per.values() for c in v},
                   key=lambda c: tuple(int(x) for x in c.split('-')))
    lab, ks = labels(res), [k for k in keys(res, True) if k in per]
    rows_of = [(k, lab[k]) for k in ks]
    timeout = res['meta'].get('migration_timeout')
    L = ['## 5b. Migration of a paused KVM VM with partly plugged memslots',
         '']
    L.append('`-accel kvm -S -cpu qemu64,host-phys-bits=on -m 1G`, one '
             '`virtio-mem-pci` on `memory-backend-ram,reserve=off`, the '
             'given amount plugged from the start of the device through the '
             'qtest virtio-mem driver (`-qtest` socket beside KVM), so the '
             'last mapped memslot is partly plugged (half of a 1 GiB one for '
             '512 MiB); `migrate` to a counting unix socket, `max-bandwidth` '
             '64 GiB/s; time is QEMU\'s `total-time`. KVM starts dirty '
             'logging with every page of a mapped memslot dirty. † = did not '
             f'complete, cancelled after {timeout or 0:.0f} s.')
    L.append('')
    cols = [(c, f'{fmt_bytes(int(c.split("-")[1]))} into '
                f'{fmt_size(int(c.split("-")[0]))}') for c in cases]
    head = ['config'] + [c[1] for c in cols]
    errs = []
    for m, what, f in (('bytes', 'stream bytes', fmt_bytes),
                       ('seconds', 'times', fmt_secs)):
        L += [f'{what.capitalize()}:', '']
        errs = config_tables(
            L, head, rows_of, cols,
            lambda k, c, m=m: mig_stats(res, k, c, m, 'kvm-migration'), f,
            [lambda c, r=r, m=m: mig_stats(res, r, c, m, 'kvm-migration')[0]
             for r in ('off', 'base', 'up-on')],
            f'Ratios of the {what}: against patched off / against '
            'unpatched 7.2 of the same build / against upstream 10.0 on:')
    if errs:
        L += ['Did not run:', ''] + errs + ['']
    return L


def tcg_reset_stats(res, key, size, metric):
    rows = res.get('tcg-reset', {}).get(key, {}).get(str(size), [])
    return (summary(r.get(metric) for r in rows if 'error' not in r),
            first_error(rows))


def tcg_hot_stats(res, key, metric):
    rows = res.get('tcg-hotpath', {}).get(key, [])
    return (summary(r.get(metric) for r in rows if 'error' not in r),
            first_error(rows))


def rank_test(xs, ys):
    """Two-sided p of the Mann-Whitney U test (normal approximation, ties
    ranked by their mean): the probability that runs of two binaries that
    do not differ would split as unevenly as xs and ys do."""
    xs, ys = list(xs), list(ys)
    if len(xs) < 4 or len(ys) < 4:
        return None
    both = sorted([(v, 0) for v in xs] + [(v, 1) for v in ys])
    ranks = [0.0] * len(both)
    i = 0
    while i < len(both):
        j = i
        while j < len(both) and both[j][0] == both[i][0]:
            j += 1
        for k in range(i, j):
            ranks[k] = (i + j + 1) / 2
        i = j
    n1, n2 = len(xs), len(ys)
    u = sum(r for r, (_, side) in zip(ranks, both) if side == 0) - \
        n1 * (n1 + 1) / 2
    z = (u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return math.erfc(abs(z) / math.sqrt(2))


def tcg_hot_runs(res, key, metric):
    return [r[metric] for r in res.get('tcg-hotpath', {}).get(key, [])
            if 'error' not in r and r.get(metric) is not None]


def goal_line(what, a, b, bound, runs=None):
    """'what: a/b = r (goal <= bound): PASS|MISS' from two summaries; with
    runs (the two configurations' single figures) also whether the runs
    differ more than chance would make them."""
    if not a or not b:
        return f'- {what}: NOT MEASURED (a configuration was not run or failed)'
    r = a['median'] / b['median']
    line = (f'- {what}: {r:.3f} (goal at most {bound}): '
            f'{"PASS" if r <= bound else "MISS"}')
    p = rank_test(*runs) if runs else None
    if p is not None:
        line += (f' (rank test p = {p:.3f}: ' +
                 ('the runs differ)' if p < 0.05 else
                  'not distinguishable from the spread between runs)'))
    return line


def vhost_stats(res, name, n, metric='kernel'):
    """Section 8 figures of case `name`: 'kernel' = VmallocUsed with n bytes
    plugged minus before plugging; 'rss'/'vsz' = the backend's."""
    rows = [r for r in res.get('vhost', {}).get('plugged', {}).get(name, [])
            if 'error' not in r]
    if metric == 'kernel':
        # over a VM with only the 1 GiB of boot RAM (section 2's base)
        base = summary(r.get('vmalloc') for r in
                       res.get('limit', {}).get('0', []))
        if not base:
            return None
        return summary(r['steps'][str(n)] - base['median'] for r in rows
                       if str(n) in r.get('steps', {}))
    field = {'rss': 'backend_rss', 'vsz': 'backend_vsz'}[metric]
    return summary(r[field] for r in rows if r.get(field) is not None)


PREALLOC_KEYS = ('on', 'stock', 'up-on')


def prealloc_stats(per, key, kind, size_g, threads):
    """summary of the plug seconds of the runs that passed their checks."""
    rows = per.get('plug', {}).get(f'{key}/{kind}/{size_g}G/{threads}', [])
    return summary(r['seconds'] for r in rows if 'error' not in r), rows


def speedup(slow, fast):
    """slow / fast of two summaries' medians, as 'N.NNx'."""
    if not slow or not fast:
        return '-'
    return f'{slow["median"] / fast["median"]:.2f}x'


def plug_cell(st, rows, size_g):
    if not st:
        return miss_text(first_error(rows)) if rows else '-'
    bad = sum('error' in r for r in rows)
    thr = sorted({r['threads_extra'] for r in rows if 'threads_extra' in r})
    return (f'{cell(st, fmt_secs)}, {size_g / st["median"]:.2f} GiB/s' +
            (f', +{"/".join(map(str, thr))} thr' if thr else '') +
            (f' ({bad} of {len(rows)} failed)' if bad else ''))


MEMBW_NOTES = {'first': 'first pass (warm-up before the cases)',
               'incoming': 'warm-up before the preallocating destinations'}


def prealloc_done(r):
    """Whether an incoming destination grew by (99 % of) what was plugged."""
    return r['dst_grown'] >= r.get('dst_size', 16 * GiB) * 0.99


def prealloc_summary(per, lab, have):
    """The section's findings, computed from the run."""
    L = ['Summary of this run:', '']
    thr = {}
    for n, rs in per.get('plug', {}).items():
        key, _, _, t = n.split('/')
        for r in rs:
            if 'threads_extra' in r:
                thr.setdefault((key, t), set()).add(r['threads_extra'])
    if thr:
        L.append('- threads QEMU started for one plug request, '
                 '`prealloc-threads` 1 / 2: ' + '; '.join(
                     f'{lab[k]} ' + ' / '.join(
                         '+' + ','.join(map(str, sorted(thr.get((k, t), {'?'}))))
                         for t in ('1', '2')) for k in have))
    for kind in ('memfd', 'hugetlb'):
        parts = []
        for k in have:
            sp = []
            for size_g in (4, 16):
                s1, _ = prealloc_stats(per, k, kind, size_g, 1)
                s2, _ = prealloc_stats(per, k, kind, size_g, 2)
                sp.append(f'{size_g} GiB {speedup(s1, s2)}')
            parts.append(f'{lab[k]} ' + ', '.join(sp))
        if any(f'/{kind}/' in n for n in per.get('plug', {})):
            L.append(f'- {kind}: time with 1 thread / time with 2: ' +
                     '; '.join(parts))
    bw = per.get('membw', {})
    ceil = [f'{n.split("/")[0]} {n.split("/")[2]} thread(s) populate '
            f'{m["populate"]:.1f}, memset {m["memset"]:.1f} GiB/s'
            for n, m in sorted(bw.items()) if len(n.split('/')) == 3]
    first = bw.get('hugetlb/16G/2/first')
    if first:
        ceil.append(f'first touch of memory unused for a while (hugetlb '
                    f'pool, 2 threads) {first["populate"]:.2f} GiB/s')
    if ceil:
        L.append('- ceiling (GiB/s): ' + '; '.join(ceil))
    fail = per.get('failure', {})
    if fail:
        L.append('- failing preallocation answered BUSY, nothing left, then '
                 '512 MiB ACKed: ' + ', '.join(
                     f'{lab[k]} {"PASS" if fail[k].get("pass") else "FAIL"}'
                     for k in have if k in fail))
    inc = per.get('incoming', {})
    pre = {}
    for n, rs in inc.items():
        key, machine, props, _, kind = n.split('/')
        r = rs[0]
        if kind != 'anon' or 'error' in r:
            continue
        what = f'{lab.get(key, key)}, {machine}' + (
            f', {props}' if props != '-' else '')
        pre.setdefault(what, []).append(prealloc_done(r))
    if pre:
        L.append('- incoming migration, the destination preallocated the '
                 'plugged 16 GiB before the guest could touch it: ' +
                 '; '.join(f'{w}: {"yes" if all(v) else "no" if not any(v) else "partly"}'
                           for w, v in pre.items()))
    L.append('')
    return L


def prealloc_section(res):
    """## 9: preallocation with the backend's threads (issue 19)."""
    per = res.get('prealloc', {})
    if not per.get('plug') and not per.get('membw'):
        return []
    lab = labels(res)
    have = [k for k in PREALLOC_KEYS if k in lab]
    L = ['## 9. Preallocation (`prealloc=on`) with the backend\'s threads', '']
    L.append('Command: `' + res['meta'].get('command', 'bench/run.py') + '`')
    L.append('')
    L.append('A paused TCG VM (`-machine pc-q35-7.2 -accel tcg -S -m '
             '1G,maxmem=17G`, the same machine type for all three binaries) '
             'with a 16 GiB `virtio-mem-pci,prealloc=on` on '
             '`memory-backend-memfd,share=on,reserve=off,prealloc-threads=N` '
             '(4 KiB pages) or the same with `hugetlb=on,hugetlbsize=2M` '
             '(the backend itself without `prealloc`). The qtest driver '
             'plugs 4 or 16 GiB in one request (2048 or 8192 blocks of '
             '2 MiB): the time is from writing the request to its answer. '
             'Median (min – max) of the runs of the cases whose checks '
             'passed: the answer is ACK, the device\'s `size` '
             '(query-memory-devices) is the plugged size, and QEMU\'s '
             'RssShmem (memfd) or the host\'s HugePages_Free (hugetlb) '
             'moved by at least the plugged size. Huge pages: '
             f'{per.get("hugetlb", "not tried")} (nr_hugepages '
             f'{per.get("hugetlb_before", "?")} before, '
             f'{per.get("hugetlb_after", "?")} after the run). Each case '
             'starts 1 s after the previous VM ended; "thr" is the most '
             'threads QEMU had during the request beyond those before it '
             '(polled every 2 ms): the preallocation threads.')
    L.append('')
    L.append('This host is itself a VM (2 vCPUs): memory that was not used '
             'for a while is backed by the hypervisor on its first touch, '
             'which is slower than anything measured here (the first touch '
             'of the hugetlb pool in the table below); memory freed a '
             'moment ago is still backed (the kernel reports free memory '
             'to the hypervisor gradually). A 4 GiB case mostly reuses '
             'memory the previous case freed and populates it at the '
             'kernel\'s rate ("populate" of `membw`); a 16 GiB one also '
             'takes memory unused for a while, so its rate depends on what '
             'ran before it. The hugetlb pool stays backed once touched, '
             'and is touched once before its cases; the first '
             'preallocating incoming case is run once more before them '
             '(not counted). Other '
             'processes of the host ran during the run (their share of the '
             'cores is given). '
             'Stock 7.2 and upstream 10.0 plug 16 GiB of memfd only with '
             '`prealloc-threads=2` (a minute each here; they use one thread '
             'at either setting, see "thr").')
    L.append('')
    L += prealloc_summary(per, lab, have)
    bw = per.get('membw', {})
    if bw:
        L.append('### The machine\'s ceiling (`bench/membw.c`, same run)')
        L.append('')
        L.append('A fresh memfd, T threads each on its own share: '
                 '"populate" is MADV_POPULATE_WRITE of the fresh memfd '
                 '(what QEMU\'s preallocation does: allocate and zero each '
                 'page), "memset" writes the populated memory again (the '
                 'write bandwidth), "repopulate" punches the whole file out '
                 'and populates it again at once (memory the kernel has '
                 'just freed).')
        L.append('')
        rows = []
        for name in sorted(bw, key=lambda n: (n.startswith('huge'),
                                               'incoming' in n,
                                               'first' not in n, n)):
            m = bw[name]
            parts = name.split('/')
            what = f'{parts[0]} {parts[1].replace("G", " GiB")}'
            if len(parts) > 3:
                what += ', ' + ('first touch of the reserved pool'
                                if parts[0] == 'hugetlb' and
                                parts[3] == 'first'
                                else MEMBW_NOTES.get(parts[3], parts[3]))
            rows.append([what, parts[2], f'{m["populate"]:.2f} GiB/s',
                         f'{m["memset"]:.2f} GiB/s' if 'memset' in m
                         else '-',
                         f'{m["repopulate"]:.2f} GiB/s' if 'repopulate' in m
                         else '-',
                         m.get('method', '?'),
                         f'{m["cores_others"]:.1f}' if 'cores_others' in m
                         else '?'])
        L += table(['memory', 'threads', 'populate (fresh)', 'memset',
                    'repopulate', 'populate by', 'cores busy with others'],
                   rows)
        L.append('')
    for kind in ('memfd', 'hugetlb'):
        if not any(f'/{kind}/' in n for n in per.get('plug', {})):
            continue
        L.append(f'### Plug with preallocation: {kind}')
        L.append('')
        rows = []
        for size_g in (4, 16):
            for t in (1, 2):
                row = [f'{size_g} GiB', str(t)]
                st = {}
                for k in have:
                    st[k], rows_k = prealloc_stats(per, k, kind, size_g, t)
                    row.append(plug_cell(st[k], rows_k, size_g))
                if 'on' in st:
                    row += [speedup(st.get(k), st['on'])
                            for k in ('stock', 'up-on') if k in st]
                rows.append(row)
        L += table(['plugged', 'threads'] + [lab[k] for k in have] +
                   [f'{lab[k]} / patched' for k in ('stock', 'up-on')
                    if k in have and 'on' in have], rows)
        L.append('')
        L.append('2 threads against 1 (time with 1 thread / time with 2):')
        L.append('')
        rows = []
        for k in have:
            row = [lab[k]]
            for size_g in (4, 16):
                s1, _ = prealloc_stats(per, k, kind, size_g, 1)
                s2, _ = prealloc_stats(per, k, kind, size_g, 2)
                row.append(speedup(s1, s2))
            rows.append(row)
        L += table(['QEMU', '4 GiB', '16 GiB'], rows)
        L.append('')
        others = [r['cores_others'] for n, rs in per['plug'].items()
                  if f'/{kind}/' in n for r in rs if 'cores_others' in r]
        if others:
            L.append('Other processes of the host kept '
                     f'{statistics.median(others):.2f} of its '
                     f'{res["meta"].get("cores", "?")} cores busy during '
                     f'these requests (median; max {max(others):.2f}).')
            L.append('')
        errs = sorted({f'{n}: {r["error"]}' for n, rs in per['plug'].items()
                       if f'/{kind}/' in n for r in rs if 'error' in r})
        if errs:
            L += ['Failed checks or runs:', ''] + [f'- {e}' for e in errs] + ['']
    fail = per.get('failure', {})
    if fail:
        L.append('### A failing preallocation (behaviour check)')
        L.append('')
        L.append(f'`memory-backend-file,mem-path=<tmpfs>/mem0,share=on,'
                 f'prealloc-threads=2` of 4 GiB on a 1 GiB tmpfs mounted by '
                 'the bench, `prealloc=on`: plug 2 GiB in one request (the '
                 'tmpfs fills up), then plug 512 MiB. Expected: BUSY, size '
                 '0 and the tmpfs empty again after the first; ACK, size '
                 '512 MiB after the second.')
        L.append('')
        rows = []
        for k in have:
            r = fail.get(k)
            if r is None:
                continue
            if 'error' in r:
                rows.append([lab[k], r['error'], '', '', '', 'FAIL'])
                continue
            rows.append([lab[k], f'{r["resp"]} ({fmt_secs(r["seconds"])})',
                         fmt_bytes(r['size']) if r['size'] else '0',
                         fmt_bytes(r['used']) if r['used'] else '0',
                         f'{r["resp_ok"]}, size {fmt_bytes(r["size_ok"])}, '
                         f'tmpfs {fmt_bytes(r["used_ok"])}',
                         'PASS' if r['pass'] else 'FAIL'])
        L += table(['QEMU', 'plug 2 GiB', 'size after', 'tmpfs used after',
                    'then plug 512 MiB', 'check'], rows)
        L.append('')
    inc = per.get('incoming', {})
    if inc:
        L.append('### Incoming migration of 16 GiB plugged')
        L.append('')
        L.append('Source: a paused TCG VM of the same binary and machine '
                 'type, 16 GiB plugged by the qtest driver, never written '
                 '(every page goes as a zero page), on private anonymous '
                 'memory (`memory-backend-ram`: the source\'s zero-page check '
                 'reads the shared zero page, so the source stays small; a '
                 'memfd source would allocate the 16 GiB while reading them). '
                 'Destination: `-incoming defer`, `prealloc=on`, '
                 '`prealloc-threads` 1 or 2, either on `memory-backend-ram` '
                 '(a zero page received is only read there, so the RssAnon '
                 'growth is what a preallocation populated) or on a shared '
                 'memfd (RssShmem; reading an absent shmem page allocates '
                 'it, so the zero-page check itself populates the memfd). '
                 '`migrate` over a unix socket; time is the source\'s '
                 '`total-time`.')
        L.append('')
        rows = []
        for name, rs in inc.items():
            key, machine, props, threads, kind = name.split('/')
            r = rs[0]
            prop = props if props != '-' else ''
            for p in ('x-early-migration', 'x-prealloc-incoming'):
                if p in r and p not in prop:
                    prop += (', ' if prop else '') + \
                        f'{p}={"on" if r[p] else "off"}'
            if 'error' in r:
                rows.append([lab.get(key, key), machine, prop or '-',
                             threads, kind, r['error'], '', '', '', ''])
                continue
            field = 'RssAnon' if kind == 'anon' else 'RssShmem'
            rows.append([lab.get(key, key), machine, prop or '-', threads,
                         kind, fmt_secs(r['total_time']),
                         f'{fmt_bytes(r["dst_grown"], True)} {field}',
                         fmt_bytes(r['dst_size']),
                         f'+{r.get("dst_threads_extra", "?")}',
                         ('yes' if prealloc_done(r)
                          else 'no') if kind == 'anon' else
                         'cannot tell: the zero-page check populated it'
                         if prealloc_done(r) else 'no'])
        w = per.get('incoming_warmup')
        if w:
            L.append('The first destination that populates 16 GiB pays for '
                     'memory unused for a while, whichever binary it is '
                     '(40-60 s instead of 5-15 s here); so the first '
                     f'preallocating case (`{w.get("case")}`) ran once '
                     'before them, not counted: ' +
                     (f'{fmt_secs(w["total_time"])}.' if 'error' not in w
                      else f'failed: {w["error"]}.'))
            L.append('')
        L += table(['QEMU', 'machine', 'properties (destination)', 'threads',
                    'destination memory', 'migration', 'destination grew',
                    'size', 'threads added', 'destination preallocated'],
                   rows)
        L.append('')
    return L


def vhost_section(res):
    """## 8: vhost-user-blk beside a 1 TiB device."""
    per = res.get('vhost', {})
    if not per.get('plugged'):
        return []
    lab = labels(res)
    L = ['## 8. vhost-user backends: host kernel memory and the backend\'s '
         'cost', '']
    L.append('A KVM VM (started paused; the qtest driver sets up the '
             'vhost-user-blk function, then the VM runs with a BIOS that '
             'only halts, so that the vhost device starts its backend) with '
             '1 GiB of boot RAM and a 1 TiB `virtio-mem-pci` as shared memfds, '
             'a `vhost-user-blk-pci` on `qemu-storage-daemon` (ours: the '
             'series\' libvhost-user, 509 regions; Debian\'s stock one: '
             '32), 1 GiB then 16 GiB plugged by the qtest driver. Host kernel '
             'memory is VmallocUsed with the memory plugged minus that of a VM with '
             'only the 1 GiB of boot RAM; "boot RAM" is the same amount of '
             'ordinary boot RAM (section 2\'s limit). Stock 7.2 maps the whole '
             'device as one memslot from the start.')
    L.append('')
    names = list(per['plugged'])
    sizes = (GiB, 16 * GiB)
    rows = []
    for name in names:
        key, backend, dev = name.split('/')[:3]
        props = name.split('/', 3)[3] if name.count('/') >= 3 else ''
        rs = per['plugged'][name]
        err = first_error(rs) if all('error' in r for r in rs) else None
        ok = [r for r in rs if 'error' not in r]
        slots = sorted({r.get('memslots') for r in ok}, key=str)
        row = [f'{lab.get(key, key)}', {'none': 'no vhost', 'own': 'ours',
                                         'stock': 'stock 7.2'}[backend],
               f'{dev}iB' + (f', {props}' if props else ''),
               '-' if err else ', '.join(
                   ('1 (no property)' if key == 'stock' else 'not shown')
                   if x is None else str(x) for x in slots)]
        for n in sizes:
            k = vhost_stats(res, name, n)
            row += [cell(k, fmt_bytes) if not err else 'refused',
                    ratio(k, limit_stats(res, n)) if not err else '-']
        row.append(cell(vhost_stats(res, name, 16 * GiB, 'vsz'), fmt_bytes)
                   if backend != 'none' and not err else '-')
        rows.append(row)
    L += table(['QEMU', 'backend', 'device', 'memslots',
                '1 GiB: kernel', '/ boot RAM', '16 GiB: kernel', '/ boot RAM',
                'backend VSZ at 16 GiB'], rows)
    L.append('')
    errs = sorted({first_error(rs) for rs in per['plugged'].values()
                   if first_error(rs)})
    if errs:
        L += ['Refused or failed:', ''] + [f'- {e}' for e in errs] + ['']
    L.append('Goals (issue 18): with our backend, the same kernel memory as '
             'without vhost (at most 1.05x), and 1.00x boot RAM with '
             '`memslot-size=1G`:')
    L.append('')
    for key in ('on', 'up-on'):
        for n in sizes:
            L.append(goal_line(
                f'{lab.get(key, key)}, our qemu-storage-daemon / no vhost, '
                f'{n // GiB} GiB plugged',
                vhost_stats(res, f'{key}/own/1024G', n),
                vhost_stats(res, f'{key}/none/1024G', n), 1.05))
    for dev in ('1024G', '256G'):
        rs = per['plugged'].get(f'on/own/{dev}/memslot-size=1G', [])
        if rs and all('error' in r for r in rs):
            L.append(f'- patched on, ours, {dev}iB device with memslot-size=1G:'
                     f' MISS, refused at start-up ({first_error(rs)}): '
                     f'{int(dev[:-1])} memslots, more than the 509 a '
                     'vhost-user backend accepts (QEMU caps vhost-user at 512)')
            continue
        for n in sizes:
            L.append(goal_line(
                f'patched on, ours, {dev}iB device with memslot-size=1G / '
                f'boot RAM, {n // GiB} GiB plugged',
                vhost_stats(res, f'on/own/{dev}/memslot-size=1G', n),
                limit_stats(res, n), 1.05))
    L.append('')
    regs = per.get('regions', {})
    if regs:
        L.append('The backend\'s own cost with every memslot mapped: one '
                 'block plugged in each of the device\'s memslots (256 of '
                 '4 GiB with ours, one of 1 TiB with the stock backend), '
                 'its memfd mappings, VmRSS and VmSize before and after:')
        L.append('')
        rows = []
        for name, rs in regs.items():
            key, backend = name.split('/')[:2]
            ok = [r for r in rs if 'error' not in r]
            if not ok:
                rows.append([lab.get(key, key), backend, first_error(rs),
                             '', '', ''])
                continue

            def sm(w, f, ok=ok):
                return summary(r[w][f] for r in ok)
            rows.append([lab.get(key, key),
                         {'own': 'ours', 'stock': 'stock 7.2'}[backend],
                         f'{ok[0]["before"]["maps"]} -> {ok[0]["after"]["maps"]}',
                         f'{cell(sm("before", "rss"), fmt_bytes)} -> '
                         f'{cell(sm("after", "rss"), fmt_bytes)}',
                         f'{cell(sm("before", "vsz"), fmt_bytes)} -> '
                         f'{cell(sm("after", "vsz"), fmt_bytes)}',
                         cell(summary(r['vmalloc_all'] for r in ok),
                              fmt_bytes)])
        L += table(['QEMU', 'backend', 'memfd mappings', 'backend VmRSS',
                    'backend VmSize', 'host kernel memory'], rows)
        L.append('')
    return L


def tcg_sections(res):
    """## 7: TCG reset with translated code in plugged memory, hot path."""
    L = []
    lab = labels(res)
    per = res.get('tcg-reset', {})
    if per:
        ks = [k for k in keys(res) if k in per]
        sizes = sorted({int(s) for v in per.values() for s in v})
        code = {r.get('code_pages') for v in per.values() for rows in v.values()
                for r in rows if r.get('code_pages')}
        L += ['## 7. TCG: system reset with code in plugged memory', '']
        L.append('The test guest under TCG (`-m 4G`, boot RAM on NUMA node 0, a '
                 '128 GiB `virtio-mem-pci` as node 1) plugs the given amount '
                 '(`requested-size`, until `size` follows), runs code from every '
                 '4 KiB page of 1 GiB of it (`/bin/memrun -x`, '
                 f'{", ".join(str(c) for c in sorted(code))} pages: one '
                 'translation per page), then QMP `system_reset`; time from the '
                 'command to the `RESET` event. The device\'s reset handler is '
                 'its unplug-all (`virtio_mem_unplug_all()`, what a guest\'s '
                 'UNPLUG_ALL request runs), and every run checks `size` is 0 '
                 'after it. The code is the same 1 GiB for both sizes (this '
                 'host cannot populate 64 GiB); the cost should follow neither.')
        L.append('')
        cols = [(str(sz), f'{sz // GiB} GiB plugged') for sz in sizes]
        head = ['config'] + [c[1] for c in cols]
        errs = config_tables(
            L, head, [(k, lab[k]) for k in ks], cols,
            lambda k, c: tcg_reset_stats(res, k, int(c), 'reset'), fmt_secs,
            [lambda c, r=r: tcg_reset_stats(res, r, int(c), 'reset')[0]
             for r in ('off', 'stock', 'up-on')],
            'Ratios: against patched off / against stock 7.2 / against '
            'upstream 10.0 on:')
        L.append('Goal (issue 17): patched on at most 1.1x patched off:')
        L.append('')
        for sz in sizes:
            L.append(goal_line(f'{sz // GiB} GiB plugged, on / off',
                               tcg_reset_stats(res, 'on', sz, 'reset')[0],
                               tcg_reset_stats(res, 'off', sz, 'reset')[0],
                               1.1))
        L.append('')
        L.append('Also measured: the guest\'s time to run the code (guest '
                 'clock) and to plug:')
        L.append('')
        cols2 = [(f'{sz}:{m}', f'{sz // GiB} GiB: {what}') for sz in sizes
                 for m, what in (('plug', 'plug'), ('code', 'run code'))]
        errs += config_tables(
            L, ['config'] + [c[1] for c in cols2], [(k, lab[k]) for k in ks],
            cols2, lambda k, c: tcg_reset_stats(res, k, int(c.split(':')[0]),
                                                c.split(':')[1]), fmt_secs)
        if errs:
            L += ['Did not run:', ''] + sorted(set(errs)) + ['']
    per = res.get('tcg-hotpath', {})
    if per:
        ks = [k for k in keys(res, True) if k in per]
        L += ['## 7b. TCG hot path: boot and a memory-heavy guest workload', '']
        L.append('The test guest under TCG (`-m 2G`, boot RAM on node 0, a '
                 '1 TiB `virtio-mem-pci` as node 1): boot (exec to the guest\'s '
                 'ready marker), plug 2 GiB, then `/bin/memrun -s 4` in the '
                 'plugged memory (bound to node 1, 4 KiB pages): fill 1 GiB '
                 '(page faults, zeroing and one store per 8 bytes) and '
                 'checksum it 4 times (one load and a multiply per 8 bytes), '
                 'guest-clock seconds. Each run is a new VM; the '
                 'configurations take turns.')
        L.append('')
        cols = [('boot', 'boot'), ('plug', 'plug 2 GiB'),
                ('fill', 'fill 1 GiB'), ('sum', 'checksum 4 GiB read')]
        head = ['config'] + [c[1] for c in cols]
        errs = config_tables(
            L, head, [(k, lab[k]) for k in ks], cols,
            lambda k, c: tcg_hot_stats(res, k, c), fmt_secs,
            [lambda c, r=r: tcg_hot_stats(res, r, c)[0]
             for r in ('stock', 'base', 'up-on')],
            'Ratios: against stock 7.2 / against unpatched 7.2 of the same '
            'build / against upstream 10.0 on:')
        sums = {r.get('checksum') for v in per.values() for r in v
                if r.get('checksum')}
        L.append(f'Checksums: {", ".join(sorted(sums))} '
                 f'({"the same in every run" if len(sums) == 1 else "DIFFER"}).')
        L.append('')
        L.append('Goal (issue 17): patched at most 1.02x stock 7.2. '
                 'Debian\'s stock binary is also built differently (its '
                 'compiler flags, every feature enabled); unpatched 7.2 of '
                 'the same build as the patched one differs from it by the '
                 'series alone, so it is compared too, and so is the build '
                 'difference itself (unpatched 7.2 of this build against '
                 'stock 7.2):')
        L.append('')
        # An extra binary (--extra-binary) such as the series' Debian
        # package is built like stock 7.2: compared with stock only.
        extra = tuple(k for k in ('extra-off', 'extra-on') if k in per)
        for ref, rname in (('stock', 'stock 7.2'),
                           ('base', 'unpatched 7.2, same build')):
            for k in ('off', 'on') + ((('base',) + extra)
                                      if ref == 'stock' else ()):
                for c, what in cols:
                    if c == 'plug':
                        continue
                    L.append(goal_line(f'{lab.get(k, k)} / {rname}, {what}',
                                       tcg_hot_stats(res, k, c)[0],
                                       tcg_hot_stats(res, ref, c)[0], 1.02,
                                       (tcg_hot_runs(res, k, c),
                                        tcg_hot_runs(res, ref, c))))
        L.append('')
        if errs:
            L += ['Did not run:', ''] + errs + ['']
    return L
