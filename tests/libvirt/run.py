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
then virsh detach-device --live of the device (its <memory> element from
the live XML: libvirt matches the whole definition, requested size
included) with 4 GiB plugged fails with QEMU's refusal ("the device has 4 GiB
plugged: ..."; neither libvirt refuses on its own, both send device_del), and
10 s later nothing has changed: no DEVICE_DELETED, the live XML, QEMU's size,
the four aliases, the backend object, the guest's virtio_mem device and the
md5 of the pattern;
back to 0 unmaps them all and MemTotal returns to its boot value; then
  - the device is on a hot-pluggable pcie-root-port that libvirt added (live
    XML, QEMU's -device and its QOM parent bus);
  - virsh detach-device --live succeeds: the guest ejects the device and
    QEMU sends DEVICE_DELETED (in libvirtd.log), the device leaves the live
    XML (not the inactive one) and query-memory-devices, libvirt deletes its
    backend (gone from qom-list /objects and query-memdev), the guest has
    no virtio_mem device and no PCI function 1af4:1058 left, `info mtree`
    no virtio-mem container, MemTotal is the boot value;
  - virsh attach-device --live of the same XML brings it back at the same
    PCI and memory address with size 0 and the backend; with libvirt 11.x
    it has dynamic-memslots on, with 9.0 off and so unplugged-inaccessible
    off (<qemu:override> applies only to the command line, not to
    device_add); 1 GiB plugs and unplugs;
virsh dumpxml (live and inactive) keeps the setting throughout.

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
            return None
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmdline = f.read().split(b'\0')
        except OSError:
            return None
        if not any(b'qemu-system' in a for a in cmdline[:1]) or \
                not any(name.encode() in a for a in cmdline):
            return None
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


def domain_xml(daemon, inactive=False):
    """(root element of virsh dumpxml, its virtio-mem <memory> elements)."""
    args = ['dumpxml', DOMAIN] + (['--inactive'] if inactive else [])
    root = ET.fromstring(daemon.virsh(*args))
    return root, [m for m in root.findall('./devices/memory')
                  if m.get('model') == 'virtio-mem']


def vmem_xml(daemon, inactive=False):
    """(memory element, override properties {name: value}) of the domain."""
    root, mems = domain_xml(daemon, inactive)
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


def backends(daemon):
    """(names in QOM's /objects, ids of query-memdev): where libvirt's
    memory backend of the device (mem<alias>) shows up in QEMU."""
    objs = sorted(o['name'] for o in daemon.qmp('qom-list', path='/objects'))
    return objs, sorted(m.get('id', '') for m in daemon.qmp('query-memdev'))


# virtio-mem's PCI ids (virtio 1.0: 0x1040 + device id 24)
VIRTIO_MEM_PCI = ('0x1af4', '0x1058')


def guest_vmem(chan):
    """(devices bound to the guest's virtio_mem driver, PCI functions with
    virtio-mem's ids in /sys/bus/pci/devices)."""
    bound = re.findall(r'\bvirtio\d+\b',
                       chan.run('ls /sys/bus/virtio/drivers/virtio_mem/'))
    pci = []
    for line in chan.run('for p in /sys/bus/pci/devices/*; do echo '
                         '"${p##*/} $(cat $p/vendor) $(cat $p/device)"; '
                         'done').splitlines():
        f = line.split()
        if len(f) == 3 and tuple(f[1:]) == VIRTIO_MEM_PCI:
            pci.append(f[0])
    return bound, pci


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


# -- virsh detach-device / attach-device of the device ------------------------

# QEMU's refusal of device_del with memory plugged (the series, patch 0033).
ERR_PLUGGED = (f"the device has {PLUG // GiB} GiB plugged: set "
               "'requested-size' to 0 and wait until 'size' is 0 before "
               "unplugging it")
DEVICE_DELETED_RE = re.compile(r'"event": *"DEVICE_DELETED".*"device": *"'
                               + re.escape(ALIAS) + '"')


def device_deleted(d):
    """QEMU's DEVICE_DELETED events for the device that libvirtd received
    (its monitor traffic is in libvirtd.log)."""
    with open(d.logfile, errors='replace') as f:
        return sum(1 for x in f if 'QEMU_MONITOR_RECV_EVENT' in x and
                   DEVICE_DELETED_RE.search(x))


def device_xml_file(d, name):
    """The device's <memory> element from the live XML, in a file for
    virsh detach-device/attach-device.  libvirt finds the device to detach
    by the whole element (virDomainMemoryFindByDef: size, node, block size,
    requested size, address, ...): a file written at boot (requested 0)
    does not match once 4 GiB are requested."""
    mem, _ = vmem_xml(d)
    mem.tail = None
    path = os.path.join(d.dir, name)
    with open(path, 'wb') as f:
        f.write(ET.tostring(mem) + b'\n')
    return path


def detach_device(d, path):
    return d.virsh_rc('detach-device', DOMAIN, path, '--live')


def device_placement(d):
    """(PCI address of the device in the live XML, alias of its controller):
    a hot-pluggable pcie-root-port (on pcie.0 the device could not be
    unplugged), checked in the live XML and in QEMU."""
    root, mems = domain_xml(d)
    eq(len(mems), 1, 'virtio-mem <memory> elements in the live XML')
    addr = mems[0].find('address')
    check(addr is not None and addr.get('type') == 'pci',
          'the device has no PCI address in the live XML: '
          + ET.tostring(mems[0]).decode())
    bus = int(addr.get('bus'), 16)
    ctrls = [c for c in root.findall("./devices/controller[@type='pci']")
             if int(c.get('index')) == bus]
    eq(len(ctrls), 1, f'PCI controllers with index {bus} (the device\'s bus)')
    eq(ctrls[0].get('model'), 'pcie-root-port',
       f'model of PCI controller {bus} (the device\'s bus)')
    tgt = ctrls[0].find('target')
    check(tgt is None or tgt.get('hotplug') != 'off',
          f'PCI controller {bus} has hotplug off')
    port = ctrls[0].find('alias').get('name')
    eq(d.qmp('qom-get', path=f'/machine/peripheral/{port}',
             property='type'), 'pcie-root-port', f'QOM type of {port}')
    parent = d.qmp('qom-get', path=f'/machine/peripheral/{ALIAS}',
                   property='parent_bus')
    check(parent.startswith(f'/machine/peripheral/{port}/'),
          f'QEMU has the device on {parent}, not on {port}')
    return dict(addr.attrib), port


def check_detach_refused(d, chan, base, maxsize, boot_mt, memdev, want_md5):
    """virsh detach-device --live with PLUG plugged fails with QEMU's
    refusal, and nothing changes.  Returns virsh's error."""
    path = device_xml_file(d, 'vmem-plugged.xml')
    rc, out = detach_device(d, path)
    msg = ' '.join(out.split())
    check(rc != 0, f'virsh detach-device with {fmt(PLUG)} plugged '
                   f'succeeded:\n{out}')
    check(ERR_PLUGGED in msg,
          f'virsh detach-device with {fmt(PLUG)} plugged failed, but not '
          f'with QEMU\'s refusal ("{ERR_PLUGGED}"):\n{out}')
    # An accepted request makes the guest eject the device (ACPI PCI
    # hot-plug: in well under a second here) and QEMU send DEVICE_DELETED:
    # give it 10 s to show that nothing of the kind happens.
    time.sleep(10)
    eq(device_deleted(d), 0, f'DEVICE_DELETED events for {ALIAS} after the '
                             'refused detach-device')
    check_plugged(d, chan, PLUG, base, maxsize, boot_mt, memdev,
                  'after the refused detach-device')
    objs, memdevs = backends(d)
    check(memdev in objs and memdev in memdevs,
          f'after the refused detach-device the backend {memdev} is not in '
          f'/objects ({objs}) or query-memdev ({memdevs})')
    bound, pci = guest_vmem(chan)
    eq((len(bound), len(pci)), (1, 1), "the guest's virtio_mem devices and "
       'virtio-mem PCI functions after the refused detach-device')
    got = chan.run('md5sum /mnt/pattern', timeout=900).split()[0]
    eq(got, want_md5, 'md5 of the pattern after the refused detach-device')
    return msg


def check_detach(d, chan, boot_mt, memdev):
    """virsh detach-device --live of the empty device: the guest ejects it,
    libvirt drops it from the live XML and deletes its backend.  Returns
    (the device XML file, its PCI address, its port, summary)."""
    addr, port = device_placement(d)
    _, dev = qemu_device_json(d)
    eq(dev.get('bus'), port, 'bus of the virtio-mem-pci -device')
    bound, pci = guest_vmem(chan)
    eq((len(bound), len(pci)), (1, 1), "the guest's virtio_mem devices and "
       'virtio-mem PCI functions before detach-device')
    objs, memdevs = backends(d)
    check(memdev in objs and memdev in memdevs,
          f'before detach-device the backend {memdev} is not in /objects '
          f'({objs}) or query-memdev ({memdevs})')
    eq(device_deleted(d), 0, f'DEVICE_DELETED events for {ALIAS} before '
                             'detach-device')
    path = device_xml_file(d, 'vmem-empty.xml')
    t0 = time.monotonic()
    rc, out = detach_device(d, path)
    check(rc == 0, f'virsh detach-device of the empty device exited {rc}:\n'
                   f'{out.strip()}')
    t_virsh = time.monotonic() - t0
    # virsh waits 5 s at most for DEVICE_DELETED (QEMU_UNPLUG_TIMEOUT in
    # qemu_hotplug.c) and reports success anyway; a later event makes
    # libvirt remove the device then.
    while domain_xml(d)[1]:
        check(time.monotonic() < t0 + 120, 'the device is still in the live '
                                           'XML 120 s after detach-device')
        time.sleep(0.5)
    t_gone = time.monotonic() - t0
    eq(d.qmp('query-memory-devices'), [],
       'query-memory-devices after detach-device')
    eq(device_deleted(d), 1, f'DEVICE_DELETED events for {ALIAS} in '
                             'libvirtd.log after detach-device')
    objs, memdevs = backends(d)
    check(memdev not in objs, f'the backend {memdev} is still in /objects '
                              f'after detach-device: {objs}')
    check(memdev not in memdevs, f'the backend {memdev} is still in '
                                 f'query-memdev after detach-device')
    eq(guest_vmem(chan), ([], []), "the guest's virtio_mem devices and "
       'virtio-mem PCI functions after detach-device')
    mtree = d.hmp('info mtree')
    check(not has_container(mtree) and memdev not in mtree,
          'info mtree still shows the device after detach-device:\n'
          + '\n'.join(x for x in mtree.splitlines()
                      if memdev in x or 'virtio-mem' in x))
    eq(memtotal(chan), boot_mt, 'MemTotal after detach-device')
    eq(len(domain_xml(d, inactive=True)[1]), 1,
       'virtio-mem devices in the inactive XML after detach-device --live')
    summary = (f'virsh returned after {t_virsh:.1f} s, the device left the '
               f'live XML after {t_gone:.1f} s '
               f'(DEVICE_DELETED); query-memory-devices empty, backend '
               f'{memdev} gone from /objects and query-memdev, the guest has '
               'no virtio_mem device or PCI function '
               f'{":".join(x[2:] for x in VIRTIO_MEM_PCI)}, '
               f'the inactive XML keeps the device')
    return path, addr, port, summary


def check_reattach(leg, d, chan, path, addr, port, base, maxsize, boot_mt):
    """virsh attach-device --live of the same XML: the device comes back at
    the same PCI and memory address, empty, and plugs memory again."""
    d.virsh('attach-device', DOMAIN, path, '--live')
    _, mems = domain_xml(d)
    eq(len(mems), 1, 'virtio-mem <memory> elements after attach-device')
    mem = mems[0]
    eq(mem.find('alias').get('name'), ALIAS, 'alias after attach-device')
    eq(to_bytes(mem.find('target/requested')), 0,
       'live XML <requested> after attach-device')
    eq(device_placement(d), (addr, port),
       'PCI address and port after attach-device')
    info = device_info(d)
    eq((info['size'], info['requested-size'], info['memaddr'],
        info['max-size'], info['block-size']),
       (0, 0, base, DEVICE_SIZE, 2 * MiB),
       'query-memory-devices size, requested-size, memaddr, max-size, '
       'block-size after attach-device')
    objs, memdevs = backends(d)
    check(info['memdev'] == f'/objects/mem{ALIAS}' and
          f'mem{ALIAS}' in objs and f'mem{ALIAS}' in memdevs,
          f'after attach-device the device\'s memdev is {info["memdev"]}; '
          f'/objects: {objs}, query-memdev: {memdevs}')
    deadline = time.monotonic() + 60
    while True:
        bound, pci = guest_vmem(chan)
        if (len(bound), len(pci)) == (1, 1):
            break
        check(time.monotonic() < deadline, "60 s after attach-device the "
              f'guest has virtio_mem devices {bound}, virtio-mem PCI '
              f'functions {pci}')
        time.sleep(0.5)
    # libvirt 9.0 applies <qemu:override> to the command line only
    # (qemuBuildDeviceCommandlineFromJSON), not to device_add; 11.x emits
    # dynamic-memslots from <target dynamicMemslots='yes'> for both.
    dynamic = leg.name == 'backports'
    eq(d.qmp('qom-get', path=f'/machine/peripheral/{ALIAS}',
             property='dynamic-memslots'), dynamic,
       'dynamic-memslots of the attached device')
    # 'auto' resolves to 'on' with dynamic-memslots=on (patch 0016), else
    # to 'off' for a memory-backend-ram on the 7.2 machine types.
    eq(d.qmp('qom-get', path=f'/machine/peripheral/{ALIAS}',
             property='unplugged-inaccessible'), 'on' if dynamic else 'off',
       'unplugged-inaccessible of the attached device')
    eq(info['memslots'], DEVICE_SIZE // SLOT if dynamic else 1,
       'query-memory-devices memslots of the attached device')
    check_setting(leg, d, 'live XML after attach-device')
    d.virsh('update-memory-device', DOMAIN, '--alias', ALIAS,
            '--requested-size', '1GiB')
    info1, _, mt = settle(d, chan, GiB, base, maxsize)
    eq(online_blocks_in(chan, base, maxsize), GiB,
       'online memory blocks with 1 GiB plugged after attach-device')
    check(GiB - GiB // 64 <= mt - boot_mt <= GiB,
          f'MemTotal grew by {mt - boot_mt} B for 1 GiB plugged')
    memdev = info['memdev'].rsplit('/', 1)[-1]
    eq(len(mapped_memslots(d.hmp('info mtree'), memdev)),
       1 if dynamic else 0,
       'memslot aliases with 1 GiB plugged after attach-device')
    d.virsh('update-memory-device', DOMAIN, '--alias', ALIAS,
            '--requested-size', '0')
    settle(d, chan, 0, base, maxsize)
    eq(memtotal(chan), boot_mt, 'MemTotal after unplugging the 1 GiB')
    return (f'at {base:#x} on {port} again, size 0, dynamic-memslots '
            f'{str(dynamic).lower()}' +
            ('' if dynamic else ' and unplugged-inaccessible off (libvirt '
             '9.0 does not apply <qemu:override> to device_add)') +
            f', {info1["memslots"]} memslot(s); 1 GiB plugged and unplugged '
            'again')


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

        err = check_detach_refused(d, chan, base, maxsize, boot_mt, memdev,
                                   want_md5)
        step(f'virsh detach-device --live with 4 GiB plugged refused by QEMU '
             f'({err}); 10 s later the device, the four aliases, the backend '
             'and the md5 are unchanged, no DEVICE_DELETED')

        chan.run('rm /mnt/pattern /mnt/seed && umount /mnt')
        d.virsh('update-memory-device', DOMAIN, '--alias', ALIAS,
                '--requested-size', '0')
        check_plugged(d, chan, 0, base, maxsize, boot_mt, memdev,
                      'after --requested-size 0')
        eq(memtotal(chan), boot_mt, 'MemTotal after unplugging all')
        check_setting(leg, d, 'live XML with nothing plugged')
        step('virsh update-memory-device --requested-size 0: all unplugged, '
             'no alias mapped')

        dev_xml, addr, port, summary = check_detach(d, chan, boot_mt, memdev)
        step(f'virsh detach-device --live of the empty device on {port} '
             f'(PCI bus {addr["bus"]} slot {addr["slot"]}): {summary}')
        summary = check_reattach(leg, d, chan, dev_xml, addr, port, base,
                                 maxsize, boot_mt)
        step(f'virsh attach-device --live of the same XML: {summary}')

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
