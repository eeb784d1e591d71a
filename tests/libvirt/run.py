#!/usr/bin/env python3
"""libvirt end-to-end test of virtio-mem dynamic-memslots (make check-libvirt).

Runs a real libvirt daemon from Debian's packages and a TCG domain
(type='qemu') whose <emulator> is the patched build/bin/qemu-system-x86_64,
booting the project's guest (build/guest) with a 64 GiB virtio-mem device
(2 MiB blocks, requested 0), in two legs:

  bookworm   bookworm's libvirt 9.0 (apt-get installed, base/libvirt-deps.txt),
             which has no dynamicMemslots attribute (it drops it silently,
             checked): dynamic-memslots comes from <qemu:override>
             (tests/libvirt/domain-libvirt9.xml).
  backports  bookworm-backports' libvirt 11.x, unpacked into a private prefix
             by scripts/fetch-libvirt-backports.sh (the machine's packages are
             not replaced): <target dynamicMemslots='yes'>, accepted because
             libvirt finds virtio-mem-pci's dynamic-memslots property in our
             binary (checked in its capabilities cache); no <qemu:override>
             (tests/libvirt/domain-libvirt11.xml).

In both legs libvirt never sets unplugged-inaccessible: its default 'auto'
resolves to 'on' with dynamic-memslots=on (checked with qom-get), and a domain
whose override sets it to 'off' fails to start with the design's error
message (checked too).

Each leg starts its own libvirtd in a private mount namespace (unshare):
overlayfs puts a private upper directory over /etc, /var and /run (and, for
the backports leg, the prefix over /usr and /etc), so its qemu.conf
(user root, no security driver, no cgroups), state, caches, logs and sockets
stay under build/libvirt-test/<leg>/ and a temporary socket directory; the
machine's configuration is untouched and nothing is left running (libvirtd and
QEMU are stopped by their process ids).  virsh talks to it through
qemu:///system?socket=... from inside the namespace (nsenter).

Per leg (the domain has ACPI: q35's PCIe root ports use ACPI PCI hot-plug
on the 7.2 machine types, and without it the guest never ejects a device):
define + start; the guest boots (MemTotal, nothing plugged, the
device's virtio-mem container empty); virsh update-memory-device
--requested-size 4GiB; then
  - QEMU reports size 4 GiB; the guest has exactly 4 GiB of 'System RAM' in
    /proc/iomem inside the device's range and exactly 4 GiB of online memory
    blocks there; MemTotal grew by the plugged size minus at most 1/64 (the
    struct pages of hot-plugged memory may live on it, memmap_on_memory);
  - libvirt's live XML reports <requested> and <current> 4 GiB;
  - `info mtree` (virsh qemu-monitor-command --hmp) shows exactly four
    memslot-N aliases of the memdev, 1 GiB each, at the right addresses, and
    QMP query-memory-devices agrees (memslots 64, mapped-memslots 4,
    memslot-size 1 GiB);
a 360 MB pattern file in a guest tmpfs (larger than the 256 MiB boot RAM, so
it lives in hot-plugged memory: checked in the guest's Movable zone) is
written and its md5 checked against the host's; virsh save + virsh restore
keep the md5, the device size, the live XML and the four aliases;
virsh detach-device of the device's live XML with 4 GiB plugged is refused
(QEMU's error passed on by libvirt) and the device and the pattern stay;
back to 0 unmaps them all and MemTotal returns to its boot value; then virsh
detach-device succeeds in both libvirt versions (both just send device_del):
the device leaves the live XML, query-memory-devices, the guest's virtio_mem
driver and `info mtree`, and libvirt deletes its backend object; virsh
attach-device of the same XML brings it back with size 0 (with libvirt 9.0
as dynamic-memslots=off, 1 memslot: its <qemu:override> applies only at
start; with 11.x with its 64 memslots); virsh dumpxml (live and inactive)
keeps the setting throughout.

A leg that cannot run on this machine (not root, no overlayfs in a mount
namespace, packages that cannot be installed, backports not reachable) is
reported as SKIP with the reason, never as a pass.  Ends with
'N passed, N failed, N skipped'; exit status 1 if a leg failed.

    tests/libvirt/run.py [--leg bookworm|backports] [--keep]

--keep leaves build/libvirt-test/<leg>/ (libvirtd.log, qemu log, console,
save image) in place even on success; on failure it is always kept.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
HERE = os.path.join(ROOT, 'tests', 'libvirt')
sys.path.insert(0, os.path.join(ROOT, 'tests', 'lib'))
from vmguest import merge_ranges, parse_mtree  # noqa: E402  pylint: disable=C0413
from guestchan import GuestChannel  # noqa: E402  pylint: disable=C0413
QEMU = os.path.join(ROOT, 'build', 'bin', 'qemu-system-x86_64')
KERNEL = os.path.join(ROOT, 'build', 'guest', 'vmlinuz')
INITRD = os.path.join(ROOT, 'build', 'guest', 'initrd.img')
BPO_PREFIX = os.path.join(ROOT, 'build', 'peers', 'libvirt-bpo')
STATE = os.path.join(ROOT, 'build', 'libvirt-test')
QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DOMAIN = 'vmem-libvirt-test'
ALIAS = 'ua-vmem0'
DEVICE_SIZE = 64 * GiB
BOOT_RAM = 256 * MiB
PLUG = 4 * GiB
SLOT = 1 * GiB          # memslot size for this device (design section 5)
BOOT_TIMEOUT = 300
T0 = time.monotonic()


class Skip(Exception):
    """The leg cannot run on this machine (reason in the text)."""


class Failure(Exception):
    """The leg ran and something is wrong."""


def log(msg):
    print(f'[{time.monotonic() - T0:7.1f}s] {msg}', flush=True)


def fmt(n):
    for unit, size in (('GiB', GiB), ('MiB', MiB), ('KiB', KiB)):
        if abs(n) >= size:
            return f'{n / size:.4g} {unit}'
    return f'{n} B'


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def eq(got, want, what):
    if got != want:
        raise Failure(f'{what}: got {got!r}, want {want!r}')


def run_cmd(args, timeout=600):
    """Run a host command -> (rc, combined output)."""
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        return 127, str(exc)
    return p.returncode, p.stdout.decode('utf-8', 'replace')


# -- the private libvirtd -----------------------------------------------------

LIBVIRTD_CONF = '''\
# tests/libvirt: private libvirtd instance (see run.py)
unix_sock_dir = "{sockdir}"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_filters = "1:qemu.qemu_monitor 2:qemu 3:*"
log_outputs = "1:file:{logfile}"
'''

QEMU_CONF = '''\
# tests/libvirt: private libvirtd instance (see run.py).  QEMU runs as root
# with no security driver, cgroups or per-domain mount namespace (this test
# runs inside a container-like environment without systemd).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
'''

INNER = '''\
#!/bin/sh
# Runs as the first process of a private mount namespace (unshare --mount):
# lay the private directories over the system's, then become libvirtd.
set -eu
d={state}
{usr_overlay}
mount -t overlay overlay -o lowerdir={etc_lower},upperdir=$d/upper/etc,workdir=$d/work/etc /etc
mount -t overlay overlay -o lowerdir=/var,upperdir=$d/upper/var,workdir=$d/work/var /var
mount -t overlay overlay -o lowerdir=/run,upperdir=$d/upper/run,workdir=$d/work/run /run
exec libvirtd --config /etc/libvirt/libvirtd.conf
'''


class Daemon:
    """A libvirtd in its own mount namespace; `prefix` (a dpkg -x tree) is
    laid over /usr and /etc when given."""

    def __init__(self, leg, prefix=None):
        self.leg = leg
        self.prefix = prefix
        self.dir = os.path.join(STATE, leg)
        self.sockdir = None
        self.proc = None
        self.uri = None

    # paths on the host side of the private directories
    def upper(self, *parts):
        return os.path.join(self.dir, 'upper', *parts)

    @property
    def logfile(self):
        return os.path.join(self.dir, 'libvirtd.log')

    def qemu_log(self, name):
        return self.upper('var', 'log', 'libvirt', 'qemu', f'{name}.log')

    def qemu_pid(self, name):
        """The domain's QEMU pid from libvirt's pidfile, or None."""
        try:
            with open(self.upper('run', 'libvirt', 'qemu', f'{name}.pid')) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            # Seen once right after a refused detach-device: the pidfile
            # could not be read for a moment.  The QEMU we knew, if it
            # still runs, is still the domain's.
            pid = getattr(self, '_last_pid', {}).get(name)
            if pid is None:
                return None
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read().split(b'\0')
        except OSError:
            return None
        if not any(b'qemu-system' in a for a in cmdline[:1]) or \
                not any(name.encode() in a for a in cmdline):
            return None
        self.__dict__.setdefault('_last_pid', {})[name] = pid
        return pid

    def start(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        for sub in ('etc', 'var', 'run'):
            os.makedirs(self.upper(sub))
            os.makedirs(os.path.join(self.dir, 'work', sub))
        os.makedirs(self.upper('etc', 'libvirt'))
        self.sockdir = tempfile.mkdtemp(prefix='lvt-', dir='/tmp')
        with open(self.upper('etc', 'libvirt', 'libvirtd.conf'), 'w') as f:
            f.write(LIBVIRTD_CONF.format(sockdir=self.sockdir,
                                         logfile=self.logfile))
        with open(self.upper('etc', 'libvirt', 'qemu.conf'), 'w') as f:
            f.write(QEMU_CONF)
        # The QEMU driver looks up Debian's compiled-in default user
        # libvirt-qemu before it reads qemu.conf: give the namespace's /etc
        # such a user (the machine's /etc/passwd is untouched).
        for db, line in (('passwd', 'libvirt-qemu:x:64055:64055:libvirt '
                          'test instance:/var/lib/libvirt:/usr/sbin/nologin'),
                         ('group', 'libvirt-qemu:x:64055:')):
            with open(f'/etc/{db}') as f:
                text = f.read()
            if not re.search(r'^libvirt-qemu:', text, re.M):
                text = text.rstrip('\n') + '\n' + line + '\n'
            with open(self.upper('etc', db), 'w') as f:
                f.write(text)
        if self.prefix:
            usr = (f'mount -t overlay overlay -o ro,lowerdir={self.prefix}'
                   f'/usr:/usr /usr')
            etc_lower = f'{self.prefix}/etc:/etc'
        else:
            usr, etc_lower = '', '/etc'
        inner = os.path.join(self.dir, 'inner.sh')
        with open(inner, 'w') as f:
            f.write(INNER.format(state=self.dir, usr_overlay=usr,
                                 etc_lower=etc_lower))
        out = open(os.path.join(self.dir, 'libvirtd.out'), 'wb')
        # unshare and sh exec: self.proc.pid is libvirtd's pid.
        self.proc = subprocess.Popen(
            ['unshare', '--mount', '--propagation', 'private', 'sh', inner],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
        out.close()
        sock = os.path.join(self.sockdir, 'libvirt-sock')
        self.uri = f'qemu:///system?socket={sock}'
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise Failure(f'libvirtd exited with {self.proc.returncode} '
                              f'at start:\n{self.tail("libvirtd.out")}\n'
                              f'{self.tail(self.logfile)}')
            if os.path.exists(sock):
                rc, _ = self.virsh_rc('list', '--all', timeout=60)
                if rc == 0:
                    rc, out = run_cmd(['nsenter', '--mount',
                                       f'--target={self.proc.pid}',
                                       'libvirtd', '--version'])
                    return out.strip().split()[-1]
            if time.monotonic() > deadline:
                raise Failure(f'libvirtd did not answer within 60 s:\n'
                              f'{self.tail(self.logfile)}')
            time.sleep(0.3)

    def tail(self, path, n=30):
        path = path if os.path.isabs(path) else os.path.join(self.dir, path)
        try:
            with open(path, 'rb') as f:
                lines = f.read().decode('utf-8', 'replace').splitlines()
        except OSError:
            return f'({path} missing)'
        return '\n'.join('    | ' + x for x in lines[-n:])

    def virsh_rc(self, *args, timeout=120):
        return run_cmd(['nsenter', '--mount', f'--target={self.proc.pid}',
                        'virsh', '-q', '-c', self.uri] + list(args),
                       timeout=timeout)

    def virsh(self, *args, timeout=120):
        rc, out = self.virsh_rc(*args, timeout=timeout)
        if rc != 0:
            raise Failure(f'virsh {" ".join(args)} exited {rc}:\n{out.strip()}')
        return out

    def qmp(self, cmd, **arguments):
        msg = {'execute': cmd}
        if arguments:
            msg['arguments'] = arguments
        out = self.virsh('qemu-monitor-command', DOMAIN, json.dumps(msg))
        reply = json.loads(out)
        if 'error' in reply:
            raise Failure(f'QMP {cmd}: {reply["error"]}')
        return reply['return']

    def hmp(self, cmdline):
        return self.virsh('qemu-monitor-command', DOMAIN, '--hmp', cmdline)

    def stop(self):
        """Destroy every domain, then stop libvirtd; QEMU processes that
        survive are killed by their pid.  Idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            rc, out = self.virsh_rc('list', '--name', timeout=60)
            for name in (out.split() if rc == 0 else []):
                self.virsh_rc('destroy', name, timeout=60)
        pid = self.qemu_pid(DOMAIN)
        if pid:
            log(f'killing leftover QEMU pid {pid}')
            os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = None


# -- the guest's command channel ----------------------------------------------

class Channel(GuestChannel):
    """ttyS1 of the guest through the domain's <serial type='unix'> socket
    (tests/lib/guestchan.py); run() returns the output and checks the exit
    status by default."""

    def __init__(self, path, alive, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise Failure(f'cannot connect to {path}: {exc}') from exc
                time.sleep(0.2)
        super().__init__(sock, alive, Failure)

    def wait_ready(self, timeout=None):
        super().wait_ready(timeout or BOOT_TIMEOUT)

    def run(self, cmd, timeout=120, check_rc=True):  # pylint: disable=W0221
        return super().run(cmd, timeout, check_rc)[1]


# -- what the guest, QEMU and libvirt show ------------------------------------

_IOMEM_RE = re.compile(r'^\s*([0-9a-f]+)-([0-9a-f]+) : (.*)$')


def guest_ram_in(chan, base, size):
    """Bytes of 'System RAM' in the guest's /proc/iomem inside
    [base, base+size), merged."""
    ranges = []
    for line in chan.run('cat /proc/iomem').splitlines():
        m = _IOMEM_RE.match(line)
        if m and m.group(3).startswith('System RAM'):
            s, e = int(m.group(1), 16), int(m.group(2), 16)
            if s >= base and e < base + size:
                ranges.append((s, e))
    merged = merge_ranges(ranges)
    return sum(e - s + 1 for s, e in merged), merged


def online_blocks_in(chan, base, size):
    """Bytes of online memory blocks inside [base, base+size)."""
    out = chan.run('cat /sys/devices/system/memory/block_size_bytes; grep -H '
                   '. /sys/devices/system/memory/memory*/online').split()
    bs = int(out[0], 16)
    n = 0
    for line in out[1:]:
        m = re.search(r'memory(\d+)/online:(\d)', line)
        if m and m.group(2) == '1' and \
                base <= int(m.group(1)) * bs < base + size:
            n += 1
    return n * bs


def memtotal(chan):
    out = chan.run('grep ^MemTotal: /proc/meminfo')
    return int(out.split()[1]) * KiB


def movable_used(chan):
    """Bytes in use in the guest's Movable zone (hot-plugged memory, with
    memhp_default_state=online_movable)."""
    out = chan.run('cat /proc/zoneinfo')
    zone, vals = None, {}
    for line in out.splitlines():
        m = re.match(r'^Node \d+, zone\s+(\S+)', line)
        if m:
            zone = m.group(1)
            continue
        f = line.split()
        if zone == 'Movable' and len(f) >= 2 and \
                f[0] in ('managed', 'nr_free_pages'):
            vals.setdefault(f[0], int(f[1]))
    return (vals.get('managed', 0) - vals.get('nr_free_pages', 0)) * 4096


def mapped_memslots(mtree, memdev):
    """memslot-N aliases of `memdev` in `info mtree`'s address-space memory
    (parsed by vmguest.parse_mtree): list of (index, start, end,
    alias_start, alias_end)."""
    out = []
    for reg in parse_mtree(mtree, 'memory'):
        i = re.fullmatch(r'memslot-(\d+)', reg['name'])
        if i and reg.get('alias') == memdev:
            out.append((int(i.group(1)), reg['start'], reg['end'],
                        reg['alias_start'], reg['alias_end']))
    return out


def has_container(mtree):
    return any(re.search(r'\(prio 0, i/o\): virtio-mem$', line)
               for line in mtree.splitlines())


def to_bytes(elem):
    units = {'b': 1, 'bytes': 1, 'k': KiB, 'kib': KiB, 'm': MiB, 'mib': MiB,
             'g': GiB, 'gib': GiB, 't': GiB << 10, 'tib': GiB << 10}
    return int(elem.text) * units[elem.get('unit', 'KiB').lower()]


def vmem_xml(daemon, inactive=False):
    """(memory element, override properties {name: value}) of the domain."""
    args = ['dumpxml', DOMAIN] + (['--inactive'] if inactive else [])
    root = ET.fromstring(daemon.virsh(*args))
    mems = [m for m in root.findall('./devices/memory')
            if m.get('model') == 'virtio-mem']
    eq(len(mems), 1, 'virtio-mem <memory> elements in dumpxml')
    props = {}
    for dev in root.findall(f'./{{{QEMU_NS}}}override/{{{QEMU_NS}}}device'):
        if dev.get('alias') == ALIAS:
            for p in dev.iter(f'{{{QEMU_NS}}}property'):
                props[p.get('name')] = p.get('value')
    return mems[0], props


def qemu_device_json(daemon):
    """The -device JSON of the virtio-mem-pci in the running QEMU."""
    pid = daemon.qemu_pid(DOMAIN)
    check(pid, 'no running QEMU for the domain (pidfile)')
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
        args = f.read().decode().split('\0')
    for a in args:
        if a.startswith('{') and '"virtio-mem-pci"' in a:
            return pid, json.loads(a)
    raise Failure('no virtio-mem-pci -device on the QEMU command line: '
                  + ' '.join(args))


def device_info(daemon):
    for dev in daemon.qmp('query-memory-devices'):
        if dev['type'] == 'virtio-mem' and dev['data'].get('id') == ALIAS:
            return dev['data']
    raise Failure(f'query-memory-devices does not list {ALIAS}')


# -- the pattern in guest memory (same scheme as tests/e2e/e2elib.py) ---------

SEED_N = 150000
SEED = ''.join(f'{i}\n' for i in range(1, SEED_N + 1)).encode()
# /mnt/blk: BLK_CHUNKS chunks "chunk <i> <tag>\n" + seed (~60 MB); the
# pattern: BLOCKS times "block <j> <tag>\n" + blk (~360 MB, 1.4 times the
# 256 MiB boot RAM).  No chunk or block is a multiple of the page size long,
# so the pages differ.  Few processes: forks are slow under TCG, and every
# 100 MB written costs the guest ~7 s there.
BLK_CHUNKS = 64
BLOCKS = 6


def pattern_bytes_iter(tag):
    blk = b''.join(f'chunk {i} {tag}\n'.encode() + SEED
                   for i in range(BLK_CHUNKS))
    for j in range(BLOCKS):
        yield f'block {j} {tag}\n'.encode()
        yield blk


def pattern_md5(tag):
    h = hashlib.md5()
    for part in pattern_bytes_iter(tag):
        h.update(part)
    return h.hexdigest()


def pattern_size(tag):
    return sum(len(part) for part in pattern_bytes_iter(tag))


def pattern_cmd(tag):
    return (f'i=0; while [ $i -lt {BLK_CHUNKS} ]; do echo "chunk $i {tag}"; '
            f'cat /mnt/seed; i=$((i+1)); done > /mnt/blk && j=0; '
            f'while [ $j -lt {BLOCKS} ]; do echo "block $j {tag}"; '
            f'cat /mnt/blk; j=$((j+1)); done > /mnt/pattern && rm /mnt/blk')


# -- one leg -------------------------------------------------------------------

class Leg:
    def __init__(self, name, label, template, version_re, prefix=None):
        self.name = name
        self.label = label
        self.template = template
        self.version_re = version_re
        self.prefix = prefix
        self.steps = []     # (step, seconds)


LEGS = [
    Leg('bookworm', "bookworm's libvirt 9.0 + <qemu:override>",
        'domain-libvirt9.xml', r'^9\.'),
    # dynamicMemslots: libvirt 10.1 and newer (bookworm-backports: 11.3).
    Leg('backports', "bookworm-backports' libvirt 11.x + dynamicMemslots='yes'",
        'domain-libvirt11.xml', r'^(10\.([1-9]|\d\d)|1[1-9]|[2-9]\d)\.',
        prefix=BPO_PREFIX),
]


def prerequisites(leg):
    """Raise Skip when the leg cannot run here, Failure when the project's
    own build outputs are missing."""
    for path in (QEMU, KERNEL, INITRD):
        if not os.path.exists(path):
            raise Failure(f'{path} is missing (make {QEMU} guest)')
    if os.geteuid() != 0:
        raise Skip('needs root (a private libvirtd in its own mount '
                   'namespace with overlayfs)')
    for tool in ('unshare', 'nsenter'):
        if not shutil.which(tool):
            raise Skip(f'{tool} (util-linux) is missing')
    os.makedirs(STATE, exist_ok=True)
    rc, out = run_cmd([os.path.join(ROOT, 'scripts', 'install-deps.sh'),
                       os.path.join(ROOT, 'base', 'libvirt-deps.txt')])
    if rc != 0:
        raise Skip('Debian packages of base/libvirt-deps.txt cannot be '
                   'installed: ' + out.strip().splitlines()[-1:][0]
                   if out.strip() else 'install-deps.sh failed')
    probe = tempfile.mkdtemp(prefix='lvt-probe-', dir=STATE)
    try:
        for sub in ('u', 'w'):
            os.mkdir(os.path.join(probe, sub))
        rc, out = run_cmd(['unshare', '--mount', '--propagation', 'private',
                           'mount', '-t', 'overlay', 'overlay', '-o',
                           f'lowerdir=/etc,upperdir={probe}/u,'
                           f'workdir={probe}/w', '/etc'], timeout=60)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if rc != 0:
        raise Skip('no overlayfs in a private mount namespace here: '
                   + out.strip())
    if leg.prefix:
        rc, out = run_cmd([os.path.join(ROOT, 'scripts',
                                        'fetch-libvirt-backports.sh')],
                          timeout=900)
        if rc != 0:
            own = [x for x in out.splitlines()
                   if x.startswith('fetch-libvirt-backports:')]
            last = own[-2:] or [x for x in out.splitlines() if x][-2:]
            raise Skip("bookworm-backports' libvirt cannot be fetched or run "
                       'here: ' + ' / '.join(last))
    else:
        if not os.path.exists('/usr/sbin/libvirtd') or \
                not shutil.which('virsh'):
            raise Skip('libvirtd or virsh missing after install-deps.sh')


def render(leg, d):
    with open(os.path.join(HERE, leg.template)) as f:
        xml = f.read()
    xml = re.sub(r'<!--.*?-->\n', '', xml, count=1, flags=re.S)
    subst = {'NAME': DOMAIN, 'EMULATOR': QEMU, 'KERNEL': KERNEL,
             'INITRD': INITRD,
             'CONSOLE_LOG': os.path.join(d.dir, 'console.log'),
             'CMD_SOCK': os.path.join(d.sockdir, 'cmd.sock')}
    for k, v in subst.items():
        xml = xml.replace(f'@{k}@', v)
    check('@' not in re.sub(r'xmlns:qemu=.*', '', xml),
          f'unfilled placeholder in {leg.template}')
    path = os.path.join(d.dir, 'domain.xml')
    with open(path, 'w') as f:
        f.write(xml)
    return path


def check_setting(leg, d, where, inactive=False):
    """The domain's XML still asks for dynamic memslots (leg's way), with
    nothing else overridden."""
    mem, props = vmem_xml(d, inactive)
    tgt = mem.find('target')
    if leg.name == 'bookworm':
        eq(props, {'dynamic-memslots': 'true'},
           f'{where}: <qemu:override> properties')
    else:
        eq(props, {}, f'{where}: <qemu:override> properties')
        eq(tgt.get('dynamicMemslots'), 'yes',
           f"{where}: <target dynamicMemslots=...>")
    return mem


ERR_NEEDS_INACCESSIBLE = ("'dynamic-memslots' property set to 'on' requires "
                          "'unplugged-inaccessible' to be 'on'")


def define_variant(d, xml_path, name, override):
    """Define a copy of the domain named `name` whose <qemu:override> sets
    `override` ({property: (type, value)}; none if empty) and whose target
    asks for dynamicMemslots='yes'; without the command channel."""
    with open(xml_path) as f:
        xml = f.read()
    xml = re.sub(r'\s*<qemu:override>.*</qemu:override>', '', xml,
                 flags=re.S)
    if override:
        props = ''.join(f"\n        <qemu:property name='{k}' type='{t}' "
                        f"value='{v}'/>" for k, (t, v) in override.items())
        xml = xml.replace('</domain>', f"""  <qemu:override>
    <qemu:device alias='{ALIAS}'>
      <qemu:frontend>{props}
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>""")
        if 'xmlns:qemu=' not in xml:
            xml = xml.replace("<domain type='qemu'>", "<domain type='qemu' "
                              f"xmlns:qemu='{QEMU_NS}'>")
    xml = xml.replace(f'<name>{DOMAIN}</name>', f'<name>{name}</name>')
    xml = xml.replace('<target>', "<target dynamicMemslots='yes'>")
    xml = re.sub(r"<serial type='unix'>.*?</serial>", '', xml, flags=re.S)
    path = os.path.join(d.dir, f'{name}.xml')
    with open(path, 'w') as f:
        f.write(xml)
    d.virsh('define', path)


def check_variants(leg, d, xml_path):
    """What the domain XML may and may not leave out (documents the
    pitfalls): libvirt 9.0 silently drops <target dynamicMemslots='yes'>,
    hence its override; in both legs an override that sets
    unplugged-inaccessible=off makes QEMU refuse to start with the design's
    exact message (libvirt itself leaves the property at 'auto', which means
    'on' with dynamic-memslots=on)."""
    if leg.name == 'bookworm':
        name = DOMAIN + '-plain'
        define_variant(d, xml_path, name, {})
        try:
            root = ET.fromstring(d.virsh('dumpxml', name, '--inactive'))
            tgt = root.find("./devices/memory[@model='virtio-mem']/target")
            eq(tgt.get('dynamicMemslots'), None,
               "libvirt 9.0's stored XML: dynamicMemslots (dropped)")
            log("  libvirt 9.0 drops <target dynamicMemslots='yes'> silently "
                '(hence <qemu:override> for dynamic-memslots)')
        finally:
            d.virsh('undefine', name)
    name = DOMAIN + '-off'
    override = {'unplugged-inaccessible': ('string', 'off')}
    if leg.name == 'bookworm':
        override['dynamic-memslots'] = ('bool', 'true')
    define_variant(d, xml_path, name, override)
    try:
        rc, out = d.virsh_rc('start', name)
        check(rc != 0, 'a domain with dynamic-memslots and an '
                       'unplugged-inaccessible=off override started')
        # QEMU exits at once; libvirt usually relays its error, but when
        # QEMU is gone before libvirt connects to its monitor, virsh only
        # says "failed to connect to monitor socket" and the error is in
        # the domain's QEMU log.
        qlog = d.qemu_log(name)
        if os.path.exists(qlog):
            with open(qlog, errors='replace') as f:
                out += '\n--- ' + qlog + ':\n' + f.read()
        check(ERR_NEEDS_INACCESSIBLE in out,
              f'start with unplugged-inaccessible=off failed otherwise:\n'
              f'{out}')
        log('  with an unplugged-inaccessible=off override the domain fails '
            f'to start: "{ERR_NEEDS_INACCESSIBLE}"')
    finally:
        d.virsh_rc('destroy', name)
        d.virsh('undefine', name)


def check_qemu_props(d):
    pid, dev = qemu_device_json(d)
    eq(dev.get('dynamic-memslots'), True, 'QEMU -device dynamic-memslots')
    eq(dev.get('unplugged-inaccessible'), None,
       'QEMU -device unplugged-inaccessible (libvirt does not set it)')
    eq(d.qmp('qom-get', path=f'/machine/peripheral/{ALIAS}',
             property='dynamic-memslots'), True,
       'qom-get dynamic-memslots')
    eq(d.qmp('qom-get', path=f'/machine/peripheral/{ALIAS}',
             property='unplugged-inaccessible'), 'on',
       "qom-get unplugged-inaccessible ('auto' resolved)")
    return pid


def settle(d, chan, want, base, maxsize, timeout=180):
    """Wait until QEMU's device size is `want` and the guest has exactly that
    much System RAM in the device's range (stable over two polls)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        info = device_info(d)
        ram, ranges = guest_ram_in(chan, base, maxsize)
        mt = memtotal(chan)
        state = (info['size'], ram, mt)
        if info['size'] == want and ram == want and state == last:
            return info, ranges, mt
        if time.monotonic() > deadline:
            raise Failure(f'after {timeout} s: device size '
                          f'{fmt(info["size"])}, guest System RAM in the '
                          f'device range {fmt(ram)} ({ranges}), want '
                          f'{fmt(want)}')
        last = state
        time.sleep(0.5)


def check_plugged(d, chan, want, base, maxsize, boot_memtotal, memdev, where):
    """Exactly `want` plugged: QEMU, guest, libvirt live XML, mtree."""
    info, ranges, mt = settle(d, chan, want, base, maxsize)
    eq(info['requested-size'], want, f'{where}: QEMU requested-size')
    blocks = online_blocks_in(chan, base, maxsize)
    eq(blocks, want, f'{where}: online memory blocks in the device range')
    delta = mt - boot_memtotal
    check(want - want // 64 <= delta <= want,
          f'{where}: MemTotal grew by {delta} B for {want} B plugged '
          f'(allowed: plugged minus at most 1/64)')
    # libvirt updates <current> from QEMU's MEMORY_DEVICE_SIZE_CHANGE event,
    # which QEMU throttles to one a second per device: the last one may
    # still be on its way.
    deadline = time.monotonic() + 30
    while True:
        mem, _ = vmem_xml(d)
        tgt = mem.find('target')
        cur = tgt.find('current')
        if cur is not None and to_bytes(cur) == want or \
                time.monotonic() > deadline:
            break
        time.sleep(0.5)
    eq(to_bytes(tgt.find('requested')), want, f'{where}: live XML <requested>')
    check(cur is not None, f'{where}: live XML has no <current>')
    eq(to_bytes(cur), want, f'{where}: live XML <current> (30 s after the '
                            'device reached the size)')
    mtree = d.hmp('info mtree')
    check(has_container(mtree), f'{where}: no virtio-mem container in '
                                'info mtree')
    slots = mapped_memslots(mtree, memdev)
    eq(len(slots), want // SLOT, f'{where}: mapped memslot aliases of '
                                 f'{memdev}')
    eq((info['memslots'], info['mapped-memslots'], info['memslot-size']),
       (DEVICE_SIZE // SLOT, len(slots), SLOT),
       f'{where}: query-memory-devices memslots, mapped-memslots, '
       'memslot-size (vs info mtree)')
    for n, (i, s, e, a_s, a_e) in enumerate(sorted(slots)):
        eq(i, n, f'{where}: memslot index')
        eq((s, e), (base + i * SLOT, base + (i + 1) * SLOT - 1),
           f'{where}: memslot-{i} guest addresses')
        eq((a_s, a_e), (i * SLOT, (i + 1) * SLOT - 1),
           f'{where}: memslot-{i} memdev offsets')
    log(f'  {where}: QEMU size {fmt(info["size"])}, guest System RAM '
        f'{fmt(want)} in the device range {[(hex(s), hex(e)) for s, e in ranges]}, '
        f'online blocks {fmt(blocks)}, MemTotal {boot_memtotal} -> {mt} '
        f'(+{delta} B = {fmt(want)} - {want - delta} B), live XML current '
        f'{fmt(to_bytes(cur))}, {len(slots)} memslot aliases mapped '
        f'(query-memory-devices: memslots {info["memslots"]}, '
        f'mapped-memslots {info["mapped-memslots"]})')
    return mtree


def virtio_mem_devices(d):
    root = ET.fromstring(d.virsh('dumpxml', DOMAIN))
    return [m for m in root.findall('./devices/memory')
            if m.get('model') == 'virtio-mem']


def detach_and_attach(leg, d, chan, mem_xml, memdev, step):
    """virsh detach-device of the empty device, then attach it again."""
    _, dev = qemu_device_json(d)
    log(f'  the device is on bus {dev.get("bus")!r} (libvirt placed it)')
    # libvirt finds the device by its definition: the live one, sizes now 0.
    with open(mem_xml, 'wb') as f:
        f.write(ET.tostring(vmem_xml(d)[0]))
    rc, out = d.virsh_rc('detach-device', DOMAIN, mem_xml, '--live')
    if rc != 0:
        raise Failure(f'virsh detach-device of the empty device exited '
                      f'{rc}:\n{out.strip()}')
    deadline = time.monotonic() + 60
    while virtio_mem_devices(d) or d.qmp('query-memory-devices'):
        check(time.monotonic() < deadline, 'the device is still there 60 s '
              'after virsh detach-device')
        time.sleep(0.5)
    objs = [o['name'] for o in d.qmp('qom-list', path='/objects')]
    check(memdev not in objs, f'memory backend {memdev} still in /objects '
                              f'after the detach: {objs}')
    out = chan.run('ls /sys/bus/virtio/drivers/virtio_mem/')
    check(not re.search(r'virtio\d', out), f'the guest still has a virtio_mem '
                                           f'device: {out!r}')
    check(not has_container(d.hmp('info mtree')),
          'info mtree still has the virtio-mem container')
    step('virsh detach-device of the empty device: gone from the live XML, '
         'query-memory-devices, the guest and /objects (backend '
         f'{memdev} deleted)')
    d.virsh('attach-device', DOMAIN, mem_xml, '--live')
    deadline = time.monotonic() + 60
    while True:
        out = chan.run('ls /sys/bus/virtio/drivers/virtio_mem/')
        if re.search(r'virtio\d', out):
            break
        check(time.monotonic() < deadline, 'the guest did not bind the '
                                           're-attached device')
        time.sleep(0.5)
    eq(len(virtio_mem_devices(d)), 1, 'virtio-mem devices after attach')
    info = device_info(d)
    eq((info['size'], info['max-size']), (0, DEVICE_SIZE),
       'device size and max-size after attach')
    # libvirt 9.0 applies <qemu:override> only when the domain starts: the
    # device it hot-plugs has dynamic-memslots off (1 memslot).  11.x
    # emits dynamicMemslots='yes' from the device's own XML.
    want = 1 if leg.name == 'bookworm' else DEVICE_SIZE // SLOT
    eq(info['memslots'], want, 'memslots of the re-attached device')
    step(f'virsh attach-device of the same XML: back, size 0, '
         f'{info["memslots"]} memslots'
         + (' (libvirt 9.0: no override on hot-plug, dynamic-memslots off)'
            if leg.name == 'bookworm' else ''))


def run_leg(leg, keep):
    prerequisites(leg)
    d = Daemon(leg.name, leg.prefix)
    chan = None
    ok = False
    t_step = time.monotonic()

    def step(name):
        nonlocal t_step
        now = time.monotonic()
        leg.steps.append((name, now - t_step))
        log(f'  [{now - t_step:5.1f} s] {name}')
        t_step = now

    try:
        daemon_version = d.start()
        check(re.match(leg.version_re, daemon_version),
              f'libvirtd version {daemon_version}, want {leg.version_re}')
        step(f'libvirtd {daemon_version} started (pid {d.proc.pid})')

        xml = render(leg, d)
        d.virsh('define', xml)
        check_setting(leg, d, 'defined (inactive) XML', inactive=True)
        if leg.name == 'backports':
            # libvirt accepted dynamicMemslots='yes' because it probed the
            # property (QMP device-list-properties) in our binary.
            capdir = d.upper('var', 'cache', 'libvirt', 'qemu',
                             'capabilities')
            found = False
            for fn in os.listdir(capdir):
                with open(os.path.join(capdir, fn)) as f:
                    text = f.read()
                if f'<emulator>{QEMU}</emulator>' in text:
                    found = "<flag name='virtio-mem-pci.dynamic-memslots'/>" \
                        in text
            check(found, 'libvirt capabilities of our binary lack '
                         'virtio-mem-pci.dynamic-memslots')
        check_variants(leg, d, xml)
        d.virsh('start', DOMAIN)
        pid = check_qemu_props(d)
        step(f'domain defined and started (QEMU pid {pid}, '
             'dynamic-memslots=true, unplugged-inaccessible auto -> on)')

        chan = Channel(os.path.join(d.sockdir, 'cmd.sock'),
                       lambda: d.qemu_pid(DOMAIN) is not None)
        chan.wait_ready()
        info = device_info(d)
        base, maxsize = info['memaddr'], info['max-size']
        memdev = info['memdev'].rsplit('/', 1)[-1]
        eq(maxsize, DEVICE_SIZE, 'device max-size')
        eq(info['block-size'], 2 * MiB, 'device block-size')
        eq(info['size'], 0, 'device size at boot')
        boot_mt = memtotal(chan)
        check_setting(leg, d, 'live XML at boot')
        mtree = d.hmp('info mtree')
        check(has_container(mtree), 'no virtio-mem container at boot')
        eq(mapped_memslots(mtree, memdev), [], 'memslot aliases at boot')
        eq((info['memslots'], info['mapped-memslots'], info['memslot-size']),
           (DEVICE_SIZE // SLOT, 0, SLOT),
           'query-memory-devices memslots, mapped-memslots, memslot-size at '
           'boot')
        eq(guest_ram_in(chan, base, maxsize)[0], 0,
           'guest System RAM in the device range at boot')
        step(f'guest booted: MemTotal {boot_mt} B, device at {base:#x} '
             f'(memdev {memdev}), container empty')

        d.virsh('update-memory-device', DOMAIN, '--alias', ALIAS,
                '--requested-size', '4GiB')
        check_plugged(d, chan, PLUG, base, maxsize, boot_mt, memdev,
                      'after --requested-size 4GiB')
        check_setting(leg, d, 'live XML with 4 GiB plugged')
        step('virsh update-memory-device --requested-size 4GiB: 4 GiB '
             'plugged, four memslot aliases')

        tag = f'libvirt-{leg.name}'
        chan.run(f'mkdir -p /mnt && mount -t tmpfs -o size=3G tmpfs /mnt && '
                 f'seq 1 {SEED_N} > /mnt/seed', timeout=120)
        chan.run(pattern_cmd(tag), timeout=900)
        size = int(chan.run('wc -c < /mnt/pattern').strip())
        eq(size, pattern_size(tag), 'pattern file size')
        used = movable_used(chan)
        check(used >= size - BOOT_RAM,
              f'guest Movable zone (hot-plugged memory) holds {used} B, want '
              f'at least {size - BOOT_RAM} B of the {size} B pattern')
        want_md5 = pattern_md5(tag)
        got = chan.run('md5sum /mnt/pattern', timeout=900).split()[0]
        eq(got, want_md5, 'md5 of the pattern in the guest before save')
        step(f'{size} B pattern in a guest tmpfs ({fmt(used)} used in the '
             f'Movable zone), md5 {got}')

        save = os.path.join(d.dir, 'save.img')
        d.virsh('save', DOMAIN, save, timeout=900)
        state = d.virsh('domstate', DOMAIN).strip()
        eq(state, 'shut off', 'domain state after virsh save')
        check(d.qemu_pid(DOMAIN) is None, 'QEMU still running after save')
        chan.close()
        chan = None
        step(f'virsh save ({os.path.getsize(save)} B image)')
        d.virsh('restore', save, timeout=900)
        eq(d.virsh('domstate', DOMAIN).strip(), 'running',
           'domain state after virsh restore')
        pid2 = check_qemu_props(d)
        check(pid2 != pid, 'restore did not start a new QEMU')
        chan = Channel(os.path.join(d.sockdir, 'cmd.sock'),
                       lambda: d.qemu_pid(DOMAIN) is not None)
        eq(chan.run('echo alive').strip(), 'alive', 'guest after restore')
        check_plugged(d, chan, PLUG, base, maxsize, boot_mt, memdev,
                      'after virsh restore')
        check_setting(leg, d, 'live XML after restore')
        got = chan.run('md5sum /mnt/pattern', timeout=900).split()[0]
        eq(got, want_md5, 'md5 of the pattern in the guest after restore')
        os.unlink(save)
        step(f'virsh restore (QEMU pid {pid2}): md5 {got} unchanged, 4 GiB '
             'plugged, four aliases mapped')

        mem_xml = os.path.join(d.dir, 'vmem.xml')
        with open(mem_xml, 'wb') as f:
            f.write(ET.tostring(vmem_xml(d)[0]))
        rc, out = d.virsh_rc('detach-device', DOMAIN, mem_xml, '--live')
        check(rc != 0, f'virsh detach-device with 4 GiB plugged succeeded:\n'
                       f'{out}')
        eq(device_info(d)['size'], PLUG, 'device size after the refused '
                                         'detach-device')
        vmem_xml(d)
        got = chan.run('md5sum /mnt/pattern', timeout=900).split()[0]
        eq(got, want_md5, 'md5 of the pattern after the refused detach')
        step('virsh detach-device with 4 GiB plugged refused: '
             + ' '.join(out.split())[:300])

        chan.run('rm /mnt/pattern /mnt/seed && umount /mnt')
        d.virsh('update-memory-device', DOMAIN, '--alias', ALIAS,
                '--requested-size', '0')
        check_plugged(d, chan, 0, base, maxsize, boot_mt, memdev,
                      'after --requested-size 0')
        eq(memtotal(chan), boot_mt, 'MemTotal after unplugging all')
        check_setting(leg, d, 'live XML with nothing plugged')
        step('virsh update-memory-device --requested-size 0: all unplugged, '
             'no alias mapped')

        detach_and_attach(leg, d, chan, mem_xml, memdev, step)

        chan.close()
        chan = None
        d.virsh('destroy', DOMAIN)
        check_setting(leg, d, 'inactive XML at the end', inactive=True)
        d.virsh('undefine', DOMAIN)
        step('destroyed and undefined; the inactive XML kept the setting')
        ok = True
    except Failure as exc:
        raise Failure(f'{exc}\n  --- QEMU log (tail):\n'
                      f'{d.tail(d.qemu_log(DOMAIN), 15)}\n'
                      f'  --- guest console (tail):\n'
                      f'{d.tail("console.log", 15)}\n'
                      f'  (everything is in {d.dir})') from None
    finally:
        if chan is not None:
            chan.close()
        d.stop()
        if ok and not keep:
            shutil.rmtree(d.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--leg', action='append',
                    choices=[leg.name for leg in LEGS],
                    help='run only this leg (repeatable)')
    ap.add_argument('--keep', action='store_true',
                    help='keep build/libvirt-test/<leg>/ on success too')
    args = ap.parse_args()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f'signal {signum}')
    signal.signal(signal.SIGTERM, on_signal)

    passed = failed = skipped = 0
    for leg in LEGS:
        if args.leg and leg.name not in args.leg:
            continue
        log(f'=== {leg.name}: {leg.label}')
        start = time.monotonic()
        try:
            run_leg(leg, args.keep)
        except Skip as exc:
            skipped += 1
            log(f'SKIP {leg.name}: {exc}')
            continue
        except Failure as exc:
            failed += 1
            log(f'FAIL {leg.name} ({time.monotonic() - start:.0f} s): {exc}')
            continue
        passed += 1
        log(f'PASS {leg.name} ({time.monotonic() - start:.0f} s)')
    print(f'{passed} passed, {failed} failed, {skipped} skipped', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
