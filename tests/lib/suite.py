"""The tiny test runner shared by the e2e and cost suites.

A suite subclasses Suite, overrides the hooks it needs and makes one
instance (its directory: traceback frames from there are printed on failure,
its Ctx subclass, the summary's heading for notes); its tests register with
@SUITE.test(name).

run(argv) runs the tests whose name contains one of the arguments (all
without), prints PASS/FAIL/SKIP per test, a failure's context, a summary, and
ends with 'N passed, N failed, N skipped' (parsed by tests/run.sh).  Every
QEMU a test started (t.vms) is stopped when the test ends and must be gone.
"""

import os
import signal
import time
import traceback


class Failure(AssertionError):
    """A failed check."""


class Skip(Exception):
    """The test cannot run here."""


def pid_alive(pid):
    """True if `pid` is a live (non-zombie) process."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
        return state not in ('Z', 'X')
    except OSError:
        return False


class Ctx:
    """Per-test state: its VMs (stopped by the runner) and notes (repeated
    in the summary)."""

    def __init__(self, name):
        self.name = name
        self.vms = []
        self.notes = []
        self.start = time.monotonic()

    def log(self, msg):
        print(f'    [{time.monotonic() - self.start:6.1f}s] {msg}', flush=True)

    def check(self, cond, msg):
        if not cond:
            raise Failure(msg)

    def skip(self, reason):
        raise Skip(reason)


def _sigterm(signum, frame):  # pylint: disable=unused-argument
    raise SystemExit(128 + signum)


class Suite:
    """here: the suite's directory; ctx: its Ctx class; notes_title: the
    summary's heading for the tests' notes."""

    def __init__(self, here, ctx=Ctx, notes_title='notes'):
        self.here, self.ctx, self.notes_title = here, ctx, notes_title
        self.tests = []

    def test(self, name):
        """Register a test function under `name` (order of definition)."""
        def deco(fn):
            self.tests.append((name, fn))
            return fn
        return deco

    # -- hooks --------------------------------------------------------------

    def header(self, n):
        return f'{n} tests'

    def message(self, exc):
        """The text of an exception."""
        return str(exc)

    def reason(self, t, exc):  # pylint: disable=unused-argument
        """The one-line reason of a failure."""
        msg = self.message(exc)
        return msg.splitlines()[0] if msg else type(exc).__name__

    def print_vm(self, vm):
        """Print what there is to know about one VM of a failed test."""

    def stop_vm(self, vm):
        vm.shutdown()

    def interrupted(self, t):
        """SIGTERM/SIGHUP/^C during test t: stop its QEMUs."""
        for vm in t.vms:
            self.stop_vm(vm)

    def after(self, t, status):
        """After test t, before its VMs are stopped."""

    def cleanup(self, t):
        """After test t's VMs are stopped."""

    def finish(self, results):
        """After the last test; may append (name, status, dur, reason,
        notes) to results."""

    # -- the runner ---------------------------------------------------------

    def print_context(self, t, exc):
        print('    ---- failure ----')
        for line in f'{type(exc).__name__}: {self.message(exc)}'.splitlines():
            print('    ' + line)
        for fr in [f for f in traceback.extract_tb(exc.__traceback__)
                   if f.filename.startswith(self.here)][-3:]:
            print(f'    at {os.path.basename(fr.filename)}:{fr.lineno} '
                  f'in {fr.name}: {fr.line}')
        for vm in t.vms:
            self.print_vm(vm)
        print('    ---- end of failure ----', flush=True)

    def run_one(self, name, fn):
        print(f'--- {name}', flush=True)
        t = self.ctx(name)
        status, reason = 'PASS', ''
        try:
            fn(t)
        except Skip as exc:
            status, reason = 'SKIP', str(exc)
        except (KeyboardInterrupt, SystemExit):
            print(f'    interrupted: killing the QEMUs of {name}', flush=True)
            self.interrupted(t)
            self.cleanup(t)
            raise
        except BaseException as exc:  # pylint: disable=broad-except
            status, reason = 'FAIL', self.reason(t, exc)
            self.print_context(t, exc)
        self.after(t, status)
        # Stop every QEMU the test started; each must be gone (by PID).
        for vm in t.vms:
            pid = vm.pid
            try:
                self.stop_vm(vm)
            except Exception as exc:  # pylint: disable=broad-except
                print(f'    cleanup of {vm.name} failed: {exc}')
            if pid and pid_alive(pid):
                status = 'FAIL'
                reason = f'QEMU pid {pid} still alive after cleanup'
        self.cleanup(t)
        dur = time.monotonic() - t.start
        print(f'{status} {name} ({dur:.1f}s)' + (f': {reason}' if reason
                                                 else ''), flush=True)
        return name, status, dur, reason, t.notes

    def run(self, argv):
        """Run the registered tests (optionally filtered by substrings);
        returns the exit status: 1 if any failed."""
        signal.signal(signal.SIGTERM, _sigterm)
        signal.signal(signal.SIGHUP, _sigterm)
        wanted = [a for a in argv if not a.startswith('-')]
        selected = [(n, f) for n, f in self.tests
                    if not wanted or any(w in n for w in wanted)]
        t_all = time.monotonic()
        print(self.header(len(selected)), flush=True)
        results = [self.run_one(name, fn) for name, fn in selected]
        self.finish(results)
        total = time.monotonic() - t_all
        print('\n=== summary ===')
        for name, status, dur, reason, _ in results:
            print(f'{status:4} {dur:6.1f}s  {name}'
                  + (f'  -- {reason}' if reason and status != 'PASS' else ''))
        notes = [(n, x) for n, _, _, _, ns in results for x in ns]
        if notes:
            print(f'\n{self.notes_title}:')
            for n, x in notes:
                print(f'  [{n}] {x}')
        count = {s: sum(1 for r in results if r[1] == s)
                 for s in ('PASS', 'FAIL', 'SKIP')}
        print(f'\ntotal time {total:.1f}s')
        print(f'{count["PASS"]} passed, {count["FAIL"]} failed, '
              f'{count["SKIP"]} skipped', flush=True)
        return 1 if count['FAIL'] else 0
