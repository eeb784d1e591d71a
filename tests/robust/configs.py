#!/usr/bin/env python3
"""Table-driven test of wrong and edge virtio-mem configurations.

Reads tests/robust/configs.tsv. Each row starts QEMU (paused, -S, no guest)
with the row's arguments and checks the outcome the row expects:

  exit:N   QEMU refuses the configuration: exit status N, and stderr
           contains the row's message
  ok       QEMU starts; the row's HMP commands (if any) run over QMP, their
           output must contain the row's message (if any); QEMU then quits
           with status 0

For every row: no signal (crash, abort), no assertion message, and, where the
row gives 'memslots', the memslot counts that the virtio-mem devices decided
(trace event virtio_mem_decide_memslots, in device order) are those listed.
A device with dynamic-memslots=off decides nothing and is not listed.

Usage: configs.py [--qemu PATH] [--markdown] [--check-doc FILE] [NAME...]
  --markdown     print the table as Markdown (for docs/robustness.md)
  --check-doc F  check that F contains the table as --markdown prints it
  --update-doc F replace the table in F (between its markers)
Ends with 'N passed, N failed, N skipped'.
"""

import argparse
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
TABLE = os.path.join(HERE, 'configs.tsv')
BEGIN = '<!-- table from tests/robust/configs.tsv: make robust-doc -->'
END = '<!-- end of table -->'
COLUMNS = ['name', 'needs', 'expect', 'memslots', 'message', 'args', 'hmp',
           'why']
BASE = ['-machine', 'q35,smm=off', '-nodefaults', '-display', 'none', '-S',
        '-qmp', 'stdio',
        '-trace', 'virtio_mem_decide_memslots',
        '-trace', 'memory_device_memslot_limit']
ACCEL = {
    'qtest': ['-accel', 'qtest', '-cpu', 'qemu64,phys-bits=46'],
    'kvm': ['-accel', 'kvm', '-cpu', 'qemu64,host-phys-bits=on'],
}
CRASH_PATTERNS = [r'Assertion .* failed', r'\*\*\s*ERROR', r'Aborted',
                  r'core dumped', r'Segmentation fault',
                  r'runtime error:', r'AddressSanitizer', r'LeakSanitizer',
                  r'(?<!ok )BUG']


def load_table(path=TABLE):
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line or line.startswith('#'):
                continue
            fields = line.split('\t')
            if fields[0] == 'name':
                if fields != COLUMNS:
                    sys.exit('%s:%d: header must be %s' % (path, lineno,
                                                           COLUMNS))
                continue
            if len(fields) != len(COLUMNS):
                sys.exit('%s:%d: %d fields, want %d' % (path, lineno,
                                                        len(fields),
                                                        len(COLUMNS)))
            row = dict(zip(COLUMNS, fields))
            row = {k: ('' if v == '-' else v) for k, v in row.items()}
            rows.append(row)
    return rows


def md_escape(s):
    return s.replace('|', '\\|')


def markdown(rows):
    out = ['| # | case | expected outcome | memslots | why |',
           '|---|---|---|---|---|']
    for i, r in enumerate(rows, 1):
        if r['expect'].startswith('signal:'):
            outcome = '**known 7.2 crash**, signal %s: `%s`' % (
                r['expect'][7:], r['message'])
        elif r['expect'].startswith('exit:'):
            outcome = 'exit status %s: `%s`' % (r['expect'][5:],
                                                r['message'])
        else:
            outcome = 'runs'
            if r['hmp']:
                outcome += '; `%s` answers `%s`' % (r['hmp'], r['message'])
            elif r['message']:
                outcome += ', says `%s`' % r['message']
        args = r['args']
        case = '**%s**: `%s`' % (r['name'], args)
        if r['needs']:
            case += ' (needs %s)' % r['needs']
        out.append('| %d | %s | %s | %s | %s |' % (
            i, md_escape(case), md_escape(outcome), r['memslots'] or '-',
            md_escape(r['why'])))
    return '\n'.join(out) + '\n'


class Env:
    """Things some rows need: a hugetlbfs mount, a usable /dev/kvm."""

    def __init__(self, qemu):
        self.qemu = qemu
        self.tmp = tempfile.mkdtemp(prefix='robust-configs-')
        self.hugetlbfs = None
        self._kvm = None

    def need(self, what):
        """None if available, else the reason to skip."""
        if what == 'hugetlbfs':
            if self.hugetlbfs is None:
                d = os.path.join(self.tmp, 'hugetlbfs')
                os.mkdir(d)
                r = subprocess.run(['mount', '-t', 'hugetlbfs', 'none', d],
                                   capture_output=True, text=True)
                self.hugetlbfs = d if r.returncode == 0 else ''
            return None if self.hugetlbfs else 'cannot mount hugetlbfs'
        if what == 'no-sanitizers':
            # mlockall() would populate ASan's shadow memory (terabytes)
            return 'sanitizer build' if os.environ.get('ROBUST_SANITIZERS') \
                else None
        if what == 'kvm':
            if self._kvm is None:
                self._kvm = os.access('/dev/kvm', os.R_OK | os.W_OK)
                if self._kvm:
                    r = subprocess.run([self.qemu, '-machine', 'none',
                                        '-accel', 'kvm', '-display', 'none',
                                        '-S', '-qmp', 'stdio'],
                                       input='{"execute":"qmp_capabilities"}'
                                       '\n{"execute":"quit"}\n',
                                       capture_output=True, text=True,
                                       timeout=60)
                    self._kvm = r.returncode == 0
            return None if self._kvm else '/dev/kvm unusable'
        return None

    def expand(self, s):
        return s.replace('{HUGETLBFS}', self.hugetlbfs or '') \
                .replace('{TMP}', self.tmp)

    def close(self):
        if self.hugetlbfs:
            subprocess.run(['umount', self.hugetlbfs])
        shutil.rmtree(self.tmp, ignore_errors=True)


def qmp_session(proc, commands, timeout):
    """Talk QMP on the process' stdin/stdout; return the replies' texts."""
    deadline = time.monotonic() + timeout
    buf = b''
    out = []

    def read_reply():
        nonlocal buf
        while True:
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                if 'return' in msg or 'error' in msg:
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError('no QMP reply')
            r, _, _ = select.select([proc.stdout], [], [], left)
            if r:
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    raise EOFError('QEMU closed QMP')
                buf += data

    def send(cmd, **args):
        msg = {'execute': cmd}
        if args:
            msg['arguments'] = args
        proc.stdin.write((json.dumps(msg) + '\n').encode())
        proc.stdin.flush()
        return read_reply()

    send('qmp_capabilities')
    for c in commands:
        r = send('human-monitor-command', **{'command-line': c})
        out.append(r.get('return', json.dumps(r.get('error'))))
    try:
        send('quit')
    except EOFError:
        pass
    return out


def run_row(row, env, verbose):
    accel = 'kvm' if 'kvm' in row['needs'].split(',') else 'qtest'
    args = env.expand(row['args']).split()
    cmd = [env.qemu] + BASE + ACCEL[accel] + args
    hmp = [env.expand(c).strip() for c in row['hmp'].split(';')
           if c.strip()]
    expect = row['expect']
    errors = []

    stderr_path = os.path.join(env.tmp, 'stderr')
    with open(stderr_path, 'w+b') as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
        replies = []
        try:
            if expect == 'ok':
                replies = qmp_session(proc, hmp, 120)
            status = proc.wait(timeout=120)
        except (TimeoutError, EOFError, subprocess.TimeoutExpired) as e:
            errors.append('QMP: %s' % e)
            proc.kill()
            status = proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors='replace')

    text = stderr + '\n'.join(replies)
    if status < 0 and not expect.startswith('signal:'):
        errors.append('killed by signal %d' % -status)
    for pat in CRASH_PATTERNS:
        if re.search(pat, text) and not expect.startswith('signal:'):
            errors.append('crash pattern /%s/' % pat)
    if expect.startswith('signal:'):
        # a known crash, kept in the table so that a fix shows up
        want = -int(expect[7:])
        if status != want:
            errors.append('status %d, want the known crash (%d)' % (status,
                                                                    want))
        if row['message'] not in stderr:
            errors.append('stderr lacks %r' % row['message'])
    elif expect.startswith('exit:'):
        want = int(expect[5:])
        if status != want:
            errors.append('exit status %d, want %d' % (status, want))
        if row['message'] not in stderr:
            errors.append('stderr lacks %r' % row['message'])
    else:
        if status != 0:
            errors.append('exit status %d, want 0' % status)
        if row['message'] and row['message'] not in '\n'.join(replies) \
                and row['message'] not in stderr:
            errors.append('output lacks %r' % row['message'])
    if row['memslots'] == 'none':
        row = dict(row, memslots='')
        if 'virtio_mem_decide_memslots' in stderr:
            errors.append('a device decided on memslots')
    elif row['memslots']:
        got = re.findall(r'virtio_mem_decide_memslots .*nb_memslots=(\d+)',
                         stderr)
        if ','.join(got) != row['memslots']:
            errors.append('memslots %s, want %s' % (','.join(got) or '-',
                                                    row['memslots']))
    if errors or verbose:
        print('    command: %s' % ' '.join(cmd))
        if hmp:
            print('    hmp: %s' % hmp)
        for line in (stderr.strip().splitlines() + replies)[-12:]:
            print('    | %s' % line.strip())
    return errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--qemu', default=os.environ.get(
        'QEMU', os.path.join(TOP, 'build/bin/qemu-system-x86_64')))
    ap.add_argument('--markdown', action='store_true')
    ap.add_argument('--check-doc')
    ap.add_argument('--update-doc')
    ap.add_argument('-v', '--verbose', action='store_true')
    ap.add_argument('names', nargs='*')
    a = ap.parse_args()
    rows = load_table()

    if a.markdown:
        sys.stdout.write(markdown(rows))
        return 0
    if a.update_doc:
        with open(a.update_doc) as f:
            text = f.read()
        start = text.index(BEGIN) + len(BEGIN)
        end = text.index(END)
        with open(a.update_doc, 'w') as f:
            f.write(text[:start] + '\n' + markdown(rows) + text[end:])
        print('updated the table in %s' % a.update_doc)
        return 0

    passed = failed = skipped = 0
    if a.check_doc:
        with open(a.check_doc) as f:
            if markdown(rows) in f.read():
                print('ok: %s shows the table' % a.check_doc)
                passed += 1
            else:
                print('FAIL: %s does not show the current table; '
                      'regenerate it with configs.py --markdown' % a.check_doc)
                failed += 1

    env = Env(a.qemu)
    try:
        for i, row in enumerate(rows, 1):
            if a.names and row['name'] not in a.names:
                continue
            reason = None
            for need in row['needs'].split(','):
                reason = reason or (env.need(need) if need else None)
            if reason:
                print('skip %2d %s: %s' % (i, row['name'], reason))
                skipped += 1
                continue
            t = time.monotonic()
            errors = run_row(row, env, a.verbose)
            if errors:
                print('FAIL %2d %s: %s' % (i, row['name'], '; '.join(errors)))
                failed += 1
            else:
                print('ok   %2d %s (%.1f s)' % (i, row['name'],
                                               time.monotonic() - t))
                passed += 1
    finally:
        env.close()
    print('%d passed, %d failed, %d skipped' % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == '__main__':
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main())
