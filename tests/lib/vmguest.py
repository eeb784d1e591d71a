"""Real-guest test harness: boot the tiny Linux guest (scripts/build-guest.sh)
under TCG and talk to it over QMP and a serial command channel.

    from vmguest import GuestVM
    with GuestVM(extra_args=['-device', 'virtio-mem-pci,...']) as vm:
        rc, out = vm.run('grep MemTotal /proc/meminfo')
        vm.qmp('qom-set', path='/machine/peripheral/vmem0',
               property='requested-size', value=1 << 30)
        print(vm.hmp('info mtree'))

The guest's console (ttyS0) goes to a log file; ttyS1 is a unix socket chardev
carrying the command channel: we send one shell command line, the guest runs
it with "sh -c" and answers with its output, "\\n@@END <rc>@@\\n".  The guest
prints "@@READY@@" on ttyS1 whenever its /init is ready (after every boot).
The client is tests/lib/guestchan.py (GuestChannel), shared with tests/libvirt.

QEMU is launched with QEMU's own python package (qemu.machine.QEMUMachine from
build/qemu/python).  QMP arguments are passed through verbatim (no '_' -> '-'
conversion), so use dict unpacking for dashed names:
vm.qmp('device_add', **{'driver': 'virtio-mem-pci', 'requested-size': 0}).

Every failure raises VMError, whose text carries the QEMU command line, the
QMP exchange so far, QEMU's own output and the tail of the guest console.

Migration (all optional, added for tests/e2e):

    src = GuestVM(...); src.launch()
    dst = GuestVM(..., binary=other, incoming='defer'); dst.launch(wait=False)
    uri = dst.migrate_incoming_unix()        # listen on a unix socket
    src.migrate(uri); src.wait_migration()   # -> 'completed'
    dst.wait_runstate('running'); dst.run('...')   # same guest, new QEMU

`mtree_regions()` / `mapped_memslots()` parse `info mtree`; `rss_bytes()`
reads the QEMU process's VmRSS; `pid` is the QEMU process id.

Timeouts on a loaded host: the guest runs under TCG on a host that other jobs
share, so a guest command can take several times longer than on a quiet
machine.  The timeouts of guest commands and of the ready marker therefore
count guest run time: wall-clock time minus the time QEMU's vCPU thread sat
on the host's run queue waiting for a CPU (vm.deadline(timeout), see
RunDeadline); a wall-clock cap of LOAD_STRETCH x the timeout still ends the
wait on a host so loaded that the guest hardly runs.

`host_cpu_vendor()` is the host CPU's vendor string: under KVM `-cpu qemu64`
takes the host's vendor, under TCG the model's (AMD), and the guest physical
layout depends on it (pc machines move device memory above 1 TiB for AMD
vCPUs when it would reach the AMD HyperTransport hole), so a migration stream
made under TCG loads into KVM only when both sides name the same vendor.
"""

import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(ROOT, 'build', 'qemu', 'python'))

from qemu.machine import QEMUMachine  # noqa: E402  pylint: disable=C0413

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guestchan import GuestChannel  # noqa: E402  pylint: disable=C0413

GUEST_DIR = os.path.join(ROOT, 'build', 'guest')
DEFAULT_APPEND = 'console=ttyS0 memhp_default_state=online_movable quiet'
# A wait whose timeout counts guest run time ends after at most this many
# times the timeout of wall-clock time, however loaded the host is.
LOAD_STRETCH = 10


def host_cpu_vendor():
    """The host CPU's vendor (vendor_id in /proc/cpuinfo: GenuineIntel,
    AuthenticAMD, ...), or None if it cannot be read."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'vendor_id' and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def merge_ranges(ranges):
    """Merge adjacent/overlapping inclusive (start, end) ranges."""
    out = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def default_binary():
    """$QEMU_BINARY, else build/bin/qemu-system-x86_64, else the build dir's."""
    env = os.environ.get('QEMU_BINARY')
    if env:
        return env
    for path in (os.path.join(ROOT, 'build', 'bin', 'qemu-system-x86_64'),
                 os.path.join(ROOT, 'build', 'qemu', 'build',
                              'qemu-system-x86_64')):
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError('no qemu-system-x86_64 in build/bin or '
                            'build/qemu/build (set QEMU_BINARY)')


class VMError(Exception):
    """A harness failure, with everything needed to see what happened."""

    def __init__(self, message, context=''):
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self):
        return self.message + ('\n' + self.context if self.context else '')


class RunDeadline:
    """A timeout that counts the guest's run time, not wall-clock time.

    On a host shared with other jobs, QEMU's vCPU thread is often runnable
    but waiting for a host CPU (the second field of
    /proc/PID/task/TID/schedstat).  Those seconds do not count: `timeout`
    then means as much guest progress on a loaded host as on a quiet one.
    A wall-clock cap of `stretch` x timeout still ends the wait.  While the
    guest idles its vCPU sleeps (no run-queue wait), so waiting for
    something that never comes still fails after about `timeout`.
    Without schedstat, wall-clock time counts in full.
    """

    def __init__(self, vm, timeout, stretch=LOAD_STRETCH, what=None):
        self.vm = vm
        self.timeout = timeout
        self.what = what or 'the guest'
        self.start = time.monotonic()
        self.cap = timeout * stretch
        self.wait0 = vm.vcpu_wait_seconds() if vm is not None else 0.0

    def waited(self):
        """Seconds the vCPU waited for a host CPU since the start."""
        if self.vm is None:
            return 0.0
        return max(0.0, self.vm.vcpu_wait_seconds() - self.wait0)

    def wall(self):
        return time.monotonic() - self.start

    def elapsed(self):
        """Guest run time since the start (wall time less the waits)."""
        return self.wall() - self.waited()

    def left(self):
        """Seconds left (<= 0: expired); also bounds the wall-clock cap."""
        wall = self.wall()
        return min(self.timeout - (wall - self.waited()), self.cap - wall)

    def expired(self):
        return self.left() <= 0

    def __str__(self):
        wall, waited = self.wall(), self.waited()
        text = f'{self.timeout:g}s'
        if waited >= 1:
            text += (f' of guest run time: {wall:.0f}s wall, of which the '
                     f'vCPU waited {waited:.0f}s for a host CPU')
        return text


class GuestVM:
    """One QEMU running the test guest.  Use as a context manager."""

    # pylint: disable=too-many-instance-attributes,too-many-arguments
    def __init__(self, binary=None, extra_args=(), memory='1G', maxmem=None,
                 slots=None, machine='q35', accel='tcg', smp=1,
                 kernel=None, initrd=None, append=DEFAULT_APPEND,
                 boot_timeout=120, qmp_timeout=60, name='guest',
                 incoming=None):
        self.binary = binary or default_binary()
        self.kernel = kernel or os.path.join(GUEST_DIR, 'vmlinuz')
        self.initrd = initrd or os.path.join(GUEST_DIR, 'initrd.img')
        for path in (self.kernel, self.initrd):
            if not os.path.exists(path):
                raise VMError(f'{path} is missing: run scripts/build-guest.sh')
        self.boot_timeout = boot_timeout
        self.qmp_timeout = qmp_timeout
        self.name = name
        self.workdir = tempfile.mkdtemp(prefix='vmguest-')
        self.console_log = os.path.join(self.workdir, 'console.log')
        self.chan_path = os.path.join(self.workdir, 'cmd.sock')
        self.qmp_log = []          # (direction, text) in order
        self.boot_seconds = None   # launch -> first ready marker
        self._chan = None          # GuestChannel once launched
        self._chan_deadline = None  # RunDeadline of the channel wait
        self._vcpu_tids = []
        self._vcpu_wait = 0.0      # last vcpu_wait_seconds() read
        self._vm = None
        self._popen = None

        mem = memory
        if maxmem:
            mem += f',maxmem={maxmem}'
        if slots is not None:
            mem += f',slots={slots}'
        # debug-threads: named threads ("CPU 0/TCG"), see vcpu_wait_seconds
        self.args = [
            '-name', name.replace(',', '_') + ',debug-threads=on',
            '-accel', accel, '-machine', machine, '-nodefaults',
            '-smp', str(smp), '-m', mem,
            '-kernel', self.kernel, '-initrd', self.initrd, '-append', append,
            '-chardev', f'file,id=con0,path={self.console_log}',
            '-serial', 'chardev:con0',
            '-chardev', f'socket,id=cmd0,path={self.chan_path},'
                        'server=on,wait=off',
            '-serial', 'chardev:cmd0',
        ] + list(extra_args)
        if incoming:
            self.args += ['-incoming', incoming]

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self):
        try:
            self.launch()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

    @property
    def cmdline(self):
        """The full QEMU command line (as launched, or as it will be)."""
        # pylint: disable=protected-access
        if self._vm is not None and self._vm._qemu_full_args:
            return shlex.join(self._vm._qemu_full_args)
        return shlex.join([self.binary] + self.args)

    def launch(self, wait=True):
        """Start QEMU, connect the command channel, wait for the guest."""
        start = time.monotonic()
        self._vm = QEMUMachine(self.binary, args=self.args, name=self.name,
                               base_temp_dir=self.workdir,
                               log_dir=self.workdir,
                               qmp_timer=self.qmp_timeout)
        try:
            self._vm.launch()
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            raise self.error(f'QEMU failed to start: {first}') from exc
        # pylint: disable=protected-access
        self._popen = self._vm._popen
        # QEMUMachine's timeout only covers the QMP handshake; bound every
        # command too so that a wedged QEMU fails a test instead of hanging it.
        self._vm._qmp.settimeout(self.qmp_timeout)
        self._chan = GuestChannel(
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
            self._chan_alive, self.error)
        try:
            self._chan.sock.connect(self.chan_path)
        except OSError as exc:
            raise self.error(f'cannot connect to {self.chan_path}: '
                              f'{exc}') from exc
        if wait:
            self.wait_ready()
            self.boot_seconds = time.monotonic() - start

    def shutdown(self):
        """Kill QEMU (always, by its PID) and clean up.  Idempotent."""
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()          # SIGKILL to QEMU's PID
            try:
                self._popen.wait(timeout=30)
            except Exception:  # pylint: disable=broad-except
                pass
        if self._vm is not None:
            try:
                self._vm.shutdown(hard=True)   # reaps, closes QMP, cleans up
            except Exception:  # pylint: disable=broad-except
                pass
            self._vm = None
        if os.environ.get('VMGUEST_KEEP'):
            print(f'vmguest: logs kept in {self.workdir}', file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def is_running(self):
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self):
        """QEMU's process id (None before launch)."""
        return self._popen.pid if self._popen is not None else None

    def vcpu_wait_seconds(self):
        """Total seconds QEMU's vCPU threads (the least delayed one if
        several) spent runnable but waiting for a host CPU (schedstat);
        0.0 if that cannot be read.  Only grows."""
        if self.pid is None:
            return self._vcpu_wait
        task = f'/proc/{self.pid}/task'
        if not self._vcpu_tids:
            try:
                for tid in os.listdir(task):
                    with open(f'{task}/{tid}/comm') as f:
                        if f.read().startswith('CPU '):
                            self._vcpu_tids.append(tid)
            except OSError:
                return self._vcpu_wait
        waits = []
        for tid in self._vcpu_tids:
            try:
                with open(f'{task}/{tid}/schedstat') as f:
                    waits.append(int(f.read().split()[1]) / 1e9)
            except (OSError, IndexError, ValueError):
                pass
        if waits:
            self._vcpu_wait = max(self._vcpu_wait, min(waits))
        return self._vcpu_wait

    def deadline(self, timeout, stretch=LOAD_STRETCH):
        """A RunDeadline of `timeout` seconds of this guest's run time."""
        return RunDeadline(self, timeout, stretch)

    def rss_bytes(self):
        """VmRSS of the QEMU process, in bytes."""
        try:
            with open(f'/proc/{self.pid}/status') as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        return int(line.split()[1]) * 1024
        except OSError as exc:
            raise self.error(f'cannot read /proc/{self.pid}/status: '
                             f'{exc}') from exc
        raise self.error(f'no VmRSS in /proc/{self.pid}/status')

    # -- diagnostics -------------------------------------------------------

    def console_tail(self, n=40):
        """The last n lines of the guest console (ttyS0)."""
        try:
            with open(self.console_log, 'rb') as f:
                data = f.read()
        except OSError:
            return ''
        lines = data.decode('utf-8', 'replace').splitlines()
        return '\n'.join(lines[-n:])

    def qemu_output(self):
        """QEMU's own stdout/stderr so far."""
        try:
            with open(os.path.join(self.workdir, self.name + '.log'),
                      'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def error(self, message, qmp_entries=40):
        """A VMError for `message` carrying the full context."""
        exit_note = ''
        if self._popen is not None and self._popen.poll() is not None:
            exit_note = f' (QEMU exited with status {self._popen.returncode})'
        qmp = '\n'.join(f'  {d} {t}' for d, t in self.qmp_log[-qmp_entries:])
        context = (f'--- QEMU command line:\n  {self.cmdline}\n'
                   f'--- QMP exchange (last {qmp_entries}):\n'
                   f'{qmp or "  (none)"}\n'
                   f'--- QEMU output:\n{self.qemu_output().rstrip()}\n'
                   f'--- guest console (tail):\n{self.console_tail()}')
        return VMError(message + exit_note, context)

    # -- QMP / HMP ---------------------------------------------------------

    def qmp_raw(self, cmd, **args):
        """Send a QMP command, return the whole reply ({'return'|'error'})."""
        if self._vm is None:
            raise self.error(f'QMP {cmd}: VM not launched')
        self.qmp_log.append(('->', json.dumps({'execute': cmd,
                                                'arguments': args})))
        try:
            reply = self._vm.qmp(cmd, args_dict=args)
        except Exception as exc:
            self.qmp_log.append(('<-', f'!! {type(exc).__name__}: {exc}'))
            raise self.error(f'QMP {cmd} failed: '
                              f'{type(exc).__name__}: {exc}') from exc
        self.qmp_log.append(('<-', json.dumps(reply)[:2000]))
        return reply

    def qmp(self, cmd, **args):
        """Send a QMP command, return its 'return' value; errors raise."""
        reply = self.qmp_raw(cmd, **args)
        if 'error' in reply:
            raise self.error(f'QMP {cmd} returned an error: '
                              f'{reply["error"].get("desc", reply["error"])}')
        return reply.get('return')

    def hmp(self, cmdline):
        """Run an HMP command through human-monitor-command, return text."""
        return self.qmp('human-monitor-command', **{'command-line': cmdline})

    def mtree_lines(self, match):
        """The `info mtree` lines that contain the substring `match`."""
        return [line for line in self.hmp('info mtree').splitlines()
                if match in line]

    def mtree_regions(self, address_space='memory', text=None):
        """Parse the `info mtree` section of one address space.

        Returns a list of dicts, in order: start, end (inclusive), prio,
        kind ('ram', 'i/o', 'romd', ...), name, depth (indent level) and,
        for aliases, alias (the target region's name), alias_start and
        alias_end (offsets within the target, inclusive).
        """
        text = self.hmp('info mtree') if text is None else text
        return parse_mtree(text, address_space)

    def mapped_memslots(self, memdev=None, text=None):
        """The `memslot-N` aliases mapped in address space 'memory' (the
        dynamic-memslots layout), optionally only those of one memdev id:
        list of dicts (see mtree_regions) with an extra 'index'."""
        out = []
        for reg in self.mtree_regions('memory', text):
            m = re.fullmatch(r'memslot-(\d+)', reg.get('name', ''))
            if not m or 'alias' not in reg:
                continue
            if memdev is not None and reg['alias'] != memdev:
                continue
            reg['index'] = int(m.group(1))
            out.append(reg)
        return out

    def wait_event(self, name, timeout=60, match=None):
        """Wait for a QMP event (logged in the QMP exchange)."""
        try:
            ev = self._vm.event_wait(name, timeout=timeout, match=match)
        except Exception as exc:  # asyncio.TimeoutError and friends
            raise self.error(f'no QMP event {name} within {timeout}s '
                             f'({type(exc).__name__})') from exc
        self.qmp_log.append(('<-', json.dumps(ev)[:2000]))
        return ev

    def drain_events(self, name=None):
        """The QMP events received so far and not yet taken (all of them
        are taken), optionally only those named `name`; never waits."""
        evs = self._vm.get_qmp_events(wait=False)
        for ev in evs:
            self.qmp_log.append(('<-', json.dumps(ev)[:2000]))
        return [ev for ev in evs if name is None or ev['event'] == name]

    def wait_runstate(self, want, timeout=60):
        """Poll query-status until its status is `want`."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.qmp('query-status')['status']
            if st == want:
                return
            if time.monotonic() > deadline:
                raise self.error(f'run state is {st!r} after {timeout}s, '
                                 f'want {want!r}')
            time.sleep(0.2)

    # -- migration ---------------------------------------------------------

    def migrate_incoming_unix(self):
        """With incoming='defer': listen on a unix socket, return its URI."""
        uri = 'unix:' + os.path.join(self.workdir, 'migrate.sock')
        self.qmp('migrate-incoming', uri=uri)
        return uri

    def migrate(self, uri, max_bandwidth=None, downtime_limit=None,
                capabilities=None):
        """Start an outgoing migration to `uri` (returns at once)."""
        params = {}
        if max_bandwidth is not None:
            params['max-bandwidth'] = max_bandwidth
        if downtime_limit is not None:
            params['downtime-limit'] = downtime_limit
        if params:
            self.qmp('migrate-set-parameters', **params)
        if capabilities:
            self.qmp('migrate-set-capabilities', capabilities=[
                {'capability': k, 'state': v}
                for k, v in capabilities.items()])
        self.qmp('migrate', uri=uri)

    def wait_migration(self, timeout=300, poll=0.5, stall=None):
        """Poll query-migrate until it ends; return the final info dict.
        Raises VMError unless the status is 'completed'.  timeout: overall
        limit (wall clock).  stall: also fail when for that many seconds
        neither the status nor the bytes transferred changed."""
        start = time.monotonic()
        last, last_change = None, start
        while True:
            info = self.qmp('query-migrate')
            status = info.get('status')
            if status == 'completed':
                return info
            if status in ('failed', 'cancelled'):
                raise self.error(f'migration {status}: '
                                 f'{info.get("error-desc", "")}')
            now = time.monotonic()
            progress = (status, info.get('ram', {}).get('transferred'))
            if progress != last:
                last, last_change = progress, now
            if now - start > timeout:
                raise self.error(f'migration not done after {timeout}s: '
                                 f'{json.dumps(info)[:1000]}')
            if stall is not None and now - last_change > stall:
                raise self.error(f'migration made no progress for {stall}s '
                                 f'(after {now - start:.0f}s): '
                                 f'{json.dumps(info)[:1000]}')
            time.sleep(poll)

    def system_reset(self, wait=True):
        """QMP system_reset, then (by default) wait for the guest again."""
        if self._chan is not None:
            self._chan.clear()
        self.qmp('system_reset')
        if wait:
            self.wait_ready()

    # -- command channel ---------------------------------------------------

    def _chan_alive(self):
        """The channel's liveness check, called while it waits: QEMU runs
        and the wait's RunDeadline (if any) has not expired."""
        dl = self._chan_deadline
        if dl is not None and dl.expired():
            got = self._chan.buf[-500:] if self._chan is not None else b''
            raise self.error(f'timeout ({dl}) waiting for {dl.what}; channel '
                             f'received: {got!r}')
        return self.is_running()

    def _chan_wait(self, timeout, what, fn, *args):
        """Run a channel wait under a RunDeadline of `timeout` (the
        channel's own wall-clock timeout is the deadline's cap)."""
        dl = RunDeadline(self, timeout, what=what)
        self._chan_deadline = dl
        try:
            return fn(*args, dl.cap)
        finally:
            self._chan_deadline = None

    def wait_ready(self, timeout=None):
        """Wait for the guest's ready marker (after boot or a reset);
        `timeout` counts guest run time (RunDeadline)."""
        self._chan_wait(timeout or self.boot_timeout, 'the guest ready marker',
                        self._chan.wait_ready)

    def run(self, cmd, timeout=60, check=False):
        """Run one shell command line in the guest -> (rc, output).

        `timeout` counts guest run time (RunDeadline).  With check=True a
        non-zero exit status raises VMError.  After a timeout the channel
        is out of step: tear the VM down.
        """
        if self._chan is None:
            raise self.error(f'guest command {cmd!r}: VM not launched')
        return self._chan_wait(timeout, f'guest command {cmd!r}',
                               lambda t: self._chan.run(cmd, t, check))

    def meminfo(self, field='MemTotal'):
        """A /proc/meminfo field of the guest, in bytes."""
        _, out = self.run(f'grep "^{field}:" /proc/meminfo', check=True)
        return int(out.split()[1]) * 1024


_MTREE_RE = re.compile(
    r'^(?P<indent>\s*)(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) '
    r'\(prio (?P<prio>-?\d+), (?P<kind>[^)]+)\): (?P<rest>.*)$')
_ALIAS_RE = re.compile(
    r'^alias (?P<name>\S+) @(?P<target>\S+) '
    r'(?P<astart>[0-9a-f]+)-(?P<aend>[0-9a-f]+)')


def parse_mtree(text, address_space='memory'):
    """Parse one `address-space: NAME` section of `info mtree` output
    (see GuestVM.mtree_regions)."""
    regions = []
    inside = False
    for line in text.splitlines():
        if line.startswith('address-space:') or \
                line.startswith('memory-region:'):
            if inside:
                break
            inside = line == f'address-space: {address_space}'
            continue
        if not inside:
            continue
        m = _MTREE_RE.match(line)
        if not m:
            continue
        reg = {'start': int(m.group('start'), 16),
               'end': int(m.group('end'), 16),
               'prio': int(m.group('prio')), 'kind': m.group('kind'),
               'depth': len(m.group('indent')) // 2}
        rest = m.group('rest')
        a = _ALIAS_RE.match(rest)
        if a:
            reg.update(name=a.group('name'), alias=a.group('target'),
                       alias_start=int(a.group('astart'), 16),
                       alias_end=int(a.group('aend'), 16))
        else:
            reg['name'] = rest.split(' ')[0]
        regions.append(reg)
    return regions
