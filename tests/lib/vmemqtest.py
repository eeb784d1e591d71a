"""A small virtio-mem driver speaking the qtest protocol (no guest needed).

QEMU is started with `-qtest unix:path=SOCK` (beside `-accel qtest`, or beside
`-accel kvm -S` or `-accel tcg -S`); QEMU connects to our listening socket.
Used by bench/ (bench/vmemqtest.py loads this file) and tests/cost/.  The driver finds the
virtio-mem-pci function with PCI config cycles on 0xcf8/0xcfc, maps the modern
BAR, walks the virtio-pci vendor capabilities, negotiates features (VERSION_1,
and UNPLUGGED_INACCESSIBLE / ACPI_PXM when offered), sets up virtqueue 0 in
low guest RAM (nothing else uses it: no firmware runs), and sends
struct virtio_mem_req (build/qemu/include/standard-headers/linux/virtio_mem.h),
polling the used ring for completion.  No interrupts are used.

    qt = Qtest(sock_path); qt.accept()      # before/after launching QEMU
    dev = VirtioMem(qt); dev.init()
    dev.request(PLUG, dev.addr, 512)        # -> (resp type, state)
"""

import socket
import struct
import time

# virtio_mem.h
PLUG, UNPLUG, UNPLUG_ALL, STATE = 0, 1, 2, 3
ACK, NACK, BUSY, ERROR = 0, 1, 2, 3
RESP_NAMES = {ACK: 'ACK', NACK: 'NACK', BUSY: 'BUSY', ERROR: 'ERROR'}
F_ACPI_PXM, F_UNPLUGGED_INACCESSIBLE, F_VERSION_1 = 0, 1, 32

VIRTIO_VENDOR = 0x1af4
VIRTIO_MEM_PCI_ID = 0x1040 + 24          # modern id of VIRTIO_ID_MEM

# virtio-pci modern capability types / common config offsets
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE = 1, 2, 3, 4
C_DFSELECT, C_DF, C_GFSELECT, C_GF = 0x00, 0x04, 0x08, 0x0c
C_STATUS, C_Q_SELECT, C_Q_SIZE = 0x14, 0x16, 0x18
C_Q_ENABLE, C_Q_NOFF = 0x1c, 0x1e
C_Q_DESC, C_Q_AVAIL, C_Q_USED = 0x20, 0x28, 0x30
S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK = 1, 2, 4, 8

BAR_BASE = 0xc0000000        # below q35's MMCONFIG (0xb0000000..) is RAM/hole;
                             # 0xc0000000 is inside the 32-bit PCI hole
RING_BASE = 0x100000         # 1 MiB: desc table, rings, request buffers


class QtestError(Exception):
    pass


class Qtest:
    """A qtest protocol connection (we listen; QEMU connects)."""

    def __init__(self, path, timeout=120):
        self.path = path
        self.timeout = timeout
        self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lsock.bind(path)
        self._lsock.listen(1)
        self._sock = None
        self._buf = b''

    def accept(self):
        self._lsock.settimeout(self.timeout)
        self._sock, _ = self._lsock.accept()
        self._sock.settimeout(self.timeout)

    def close(self):
        for s in (self._sock, self._lsock):
            if s is not None:
                s.close()
        self._sock = self._lsock = None

    def _line(self):
        while b'\n' not in self._buf:
            data = self._sock.recv(65536)
            if not data:
                raise QtestError('qtest connection closed by QEMU')
            self._buf += data
        line, self._buf = self._buf.split(b'\n', 1)
        return line.decode()

    def cmd(self, text):
        self._sock.sendall(text.encode() + b'\n')
        while True:
            line = self._line()
            if line.startswith('IRQ'):          # only if intercepted
                continue
            if line.startswith('OK'):
                return line[3:]
            raise QtestError(f'qtest {text!r}: {line}')

    # typed accessors
    def out(self, size, port, val):
        self.cmd(f'out{size} 0x{port:x} 0x{val:x}')

    def inp(self, size, port):
        return int(self.cmd(f'in{size} 0x{port:x}'), 16)

    def w(self, size, addr, val):
        self.cmd(f'write{size} 0x{addr:x} 0x{val:x}')

    def r(self, size, addr):
        return int(self.cmd(f'read{size} 0x{addr:x}'), 16)

    def memwrite(self, addr, data):
        self.cmd(f'write 0x{addr:x} 0x{len(data):x} 0x{data.hex()}')

    def memread(self, addr, size):
        return bytes.fromhex(self.cmd(f'read 0x{addr:x} 0x{size:x}')[2:])


class Pci:
    """Config space of one function through the legacy 0xcf8/0xcfc ports."""

    def __init__(self, qt, devfn, bus=0):
        self.qt, self.devfn, self.bus = qt, devfn, bus

    def _sel(self, off):
        self.qt.out('l', 0xcf8, 0x80000000 | (self.bus << 16) |
                    (self.devfn << 8) | (off & 0xfc))

    def read(self, off, size):
        self._sel(off)
        port = 0xcfc + (off & 3)
        return self.qt.inp({1: 'b', 2: 'w', 4: 'l'}[size], port)

    def write(self, off, size, val):
        self._sel(off)
        port = 0xcfc + (off & 3)
        self.qt.out({1: 'b', 2: 'w', 4: 'l'}[size], port, val)


def map_virtio_caps(pci, bar_base):
    """Walk the function's virtio-pci vendor capabilities, map the one
    (64-bit) memory BAR they use at bar_base, enable memory space and bus
    mastering.  Returns {cfg_type: (bar, offset, length, notify mult)}."""
    caps, bars = {}, set()
    ptr = pci.read(0x34, 1)
    while ptr:
        cap_id, nxt = pci.read(ptr, 1), pci.read(ptr + 1, 1)
        if cap_id == 0x09:
            cfg_type, bar = pci.read(ptr + 3, 1), pci.read(ptr + 4, 1)
            off, length = pci.read(ptr + 8, 4), pci.read(ptr + 12, 4)
            extra = pci.read(ptr + 16, 4) if cfg_type == CAP_NOTIFY else 0
            if cfg_type in (CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE) \
                    and cfg_type not in caps:
                caps[cfg_type] = (bar, off, length, extra)
                bars.add(bar)
        ptr = nxt
    if len(bars) != 1:
        raise QtestError(f'expected one BAR for the virtio caps, got {bars}')
    boff = 0x10 + 4 * bars.pop()
    pci.write(boff, 4, bar_base)
    if pci.read(boff, 4) & 0x4:                 # 64-bit BAR
        pci.write(boff + 4, 4, 0)
    pci.write(4, 2, pci.read(4, 2) | 0x6)       # memory space, bus master
    return caps


def find_virtio(qt, pci_ids, name):
    """The first function on bus 0 with one of the device ids."""
    if isinstance(pci_ids, int):
        pci_ids = (pci_ids,)
    for devfn in range(0, 256):
        pci = Pci(qt, devfn)
        ids = pci.read(0, 4)
        if ids & 0xffff == VIRTIO_VENDOR and ids >> 16 in pci_ids:
            return pci
    raise QtestError(f'no {name} function on bus 0')


def find_virtio_mem(qt):
    return find_virtio(qt, VIRTIO_MEM_PCI_ID, 'virtio-mem-pci')


# virtio-blk: modern id of VIRTIO_ID_BLOCK, and the transitional one that
# (vhost-user-)blk-pci has on a conventional PCI bus (q35's bus 0)
VIRTIO_BLK_PCI_IDS = (0x1040 + 2, 0x1001)


def start_virtio_blk(qt, bar_base=BAR_BASE + 0x100000,
                     ring_base=RING_BASE + 0x100000, qsize=16):
    """Bring a (vhost-user-)blk-pci function to DRIVER_OK with virtqueue 0
    set up and empty, as a guest driver would: a vhost device then starts
    its backend, which gets the memory table.  No request is sent.  The BAR
    and the ring must not overlap the virtio-mem driver's (defaults: 1 MiB
    above them)."""
    pci = find_virtio(qt, VIRTIO_BLK_PCI_IDS, 'virtio-blk-pci')
    caps = map_virtio_caps(pci, bar_base)
    c = bar_base + caps[CAP_COMMON][1]
    qt.w('b', c + C_STATUS, 0)
    qt.w('b', c + C_STATUS, S_ACK | S_DRIVER)
    qt.w('l', c + C_GFSELECT, 0)
    qt.w('l', c + C_GF, 0)
    qt.w('l', c + C_GFSELECT, 1)
    qt.w('l', c + C_GF, 1 << (F_VERSION_1 - 32))
    qt.w('b', c + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK)
    if not qt.r('b', c + C_STATUS) & S_FEATURES_OK:
        raise QtestError('virtio-blk: FEATURES_OK refused')
    qt.w('w', c + C_Q_SELECT, 0)
    qt.w('w', c + C_Q_SIZE, qsize)
    avail = ring_base + 16 * qsize
    used = (avail + 6 + 2 * qsize + 4095) & ~4095
    qt.memwrite(ring_base, bytes(used + 4096 - ring_base))
    qt.w('q', c + C_Q_DESC, ring_base)
    qt.w('q', c + C_Q_AVAIL, avail)
    qt.w('q', c + C_Q_USED, used)
    qt.w('w', c + C_Q_ENABLE, 1)
    qt.w('b', c + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)


class VirtioMem:
    """virtio-mem over virtio-pci (modern), one virtqueue, polled."""

    REQ_SIZE, RESP_SIZE = 24, 10

    def __init__(self, qt, qsize=128):
        self.qt = qt
        self.pci = None
        self.caps = {}
        self.qsize_max = qsize
        self.qsize = None
        self.avail_idx = 0
        self.used_idx = 0
        self.block_size = self.addr = self.region_size = None

    # -- setup ------------------------------------------------------------

    def init(self):
        qt = self.qt
        self.pci = pci = find_virtio_mem(qt)
        self.caps = map_virtio_caps(pci, BAR_BASE)
        self.bar_addr = BAR_BASE
        self._negotiate()
        self._setup_queue()
        cfg = self._cfg_base()
        self.block_size = qt.r('q', cfg + 0)
        self.addr = qt.r('q', cfg + 16)
        self.region_size = qt.r('q', cfg + 24)
        return self

    def _at(self, cfg_type, off=0):
        bar, boff, _, _ = self.caps[cfg_type]
        return self.bar_addr + boff + off

    def _cfg_base(self):
        return self._at(CAP_DEVICE)

    def _negotiate(self):
        qt, c = self.qt, self._at(CAP_COMMON)
        qt.w('b', c + C_STATUS, 0)
        qt.w('b', c + C_STATUS, S_ACK)
        qt.w('b', c + C_STATUS, S_ACK | S_DRIVER)
        qt.w('l', c + C_DFSELECT, 0)
        lo = qt.r('l', c + C_DF)
        qt.w('l', c + C_DFSELECT, 1)
        hi = qt.r('l', c + C_DF)
        offered = lo | (hi << 32)
        want = (1 << F_VERSION_1) | (1 << F_UNPLUGGED_INACCESSIBLE) | \
            (1 << F_ACPI_PXM)
        feat = offered & want
        if not feat & (1 << F_VERSION_1):
            raise QtestError(f'device offers no VERSION_1 ({offered:#x})')
        self.features = feat
        qt.w('l', c + C_GFSELECT, 0)
        qt.w('l', c + C_GF, feat & 0xffffffff)
        qt.w('l', c + C_GFSELECT, 1)
        qt.w('l', c + C_GF, feat >> 32)
        qt.w('b', c + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK)
        if not qt.r('b', c + C_STATUS) & S_FEATURES_OK:
            raise QtestError(f'FEATURES_OK refused (features {feat:#x})')

    def _setup_queue(self):
        qt, c = self.qt, self._at(CAP_COMMON)
        qt.w('w', c + C_Q_SELECT, 0)
        size = qt.r('w', c + C_Q_SIZE)
        if size == 0:
            raise QtestError('virtqueue 0 does not exist')
        self.qsize = min(size, self.qsize_max)
        qt.w('w', c + C_Q_SIZE, self.qsize)
        q = self.qsize
        self.desc = RING_BASE
        self.avail = self.desc + 16 * q
        self.used = (self.avail + 6 + 2 * q + 4095) & ~4095
        self.bufs = (self.used + 6 + 8 * q + 4095) & ~4095
        # zero the rings
        self.qt.memwrite(RING_BASE, bytes(self.bufs - RING_BASE))
        qt.w('q', c + C_Q_DESC, self.desc)
        qt.w('q', c + C_Q_AVAIL, self.avail)
        qt.w('q', c + C_Q_USED, self.used)
        noff = qt.r('w', c + C_Q_NOFF)
        qt.w('w', c + C_Q_ENABLE, 1)
        _, boff, _, mult = self.caps[CAP_NOTIFY]
        self.notify_addr = self.bar_addr + boff + noff * mult
        qt.w('b', c + C_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK |
             S_DRIVER_OK)
        # Two descriptors per request: slot i uses desc 2i (req) and 2i+1
        # (resp); their buffers are fixed, written once here.
        descs = b''
        for i in range(q // 2):
            req, resp = self._req_addr(i), self._resp_addr(i)
            descs += struct.pack('<QIHH', req, self.REQ_SIZE, 1, 2 * i + 1)
            descs += struct.pack('<QIHH', resp, self.RESP_SIZE, 2, 0)
        self.qt.memwrite(self.desc, descs)

    def _req_addr(self, slot):
        return self.bufs + 64 * slot

    def _resp_addr(self, slot):
        return self.bufs + 64 * slot + 32

    # -- requests -----------------------------------------------------------

    @property
    def max_burst(self):
        return self.qsize // 2

    def submit(self, reqs, notify=True):
        """Queue up to max_burst (type, addr, nb_blocks) requests, notify
        once (unless notify is False: then notify() starts them); returns
        the slots used."""
        assert 0 < len(reqs) <= self.max_burst
        q = self.qsize
        slots = list(range(len(reqs)))
        data = b''
        for slot, (typ, addr, nb) in zip(slots, reqs):
            data = struct.pack('<HHHHQHHHH', typ, 0, 0, 0, addr, nb, 0, 0, 0)
            self.qt.memwrite(self._req_addr(slot), data)
        ring = b''.join(struct.pack('<H', 2 * s) for s in slots)
        start = self.avail_idx % q
        if start + len(slots) <= q:
            self.qt.memwrite(self.avail + 4 + 2 * start, ring)
        else:
            for k, s in enumerate(slots):
                self.qt.w('w', self.avail + 4 + 2 * ((start + k) % q), 2 * s)
        self.avail_idx = (self.avail_idx + len(slots)) & 0xffff
        self.qt.w('w', self.avail + 2, self.avail_idx)
        if notify:
            self.notify()
        return slots

    def notify(self):
        """Kick the queue: the device processes what is available."""
        self.qt.w('w', self.notify_addr, 0)

    def wait(self, n, timeout=120):
        """Poll the used ring until n more requests completed."""
        target = (self.used_idx + n) & 0xffff
        deadline = time.monotonic() + timeout
        while self.qt.r('w', self.used + 2) != target:
            if time.monotonic() > deadline:
                raise QtestError(f'virtio-mem: {n} request(s) not completed '
                                 f'after {timeout}s')
        self.used_idx = target

    def responses(self, slots):
        out = []
        for s in slots:
            typ, _, _, _, state = struct.unpack(
                '<HHHHH', self.qt.memread(self._resp_addr(s), self.RESP_SIZE))
            out.append((typ, state))
        return out

    def request(self, typ, addr=0, nb_blocks=0, check=True):
        """One request, synchronously -> (resp type, state)."""
        slots = self.submit([(typ, addr, nb_blocks)])
        self.wait(1)
        resp = self.responses(slots)[0]
        if check and resp[0] != ACK:
            raise QtestError(f'virtio-mem request type {typ} addr {addr:#x} '
                             f'nb_blocks {nb_blocks}: '
                             f'{RESP_NAMES.get(resp[0], resp[0])}')
        return resp

    def burst(self, reqs, check=True):
        """Queue reqs in bursts of max_burst, each completed before the next."""
        done = []
        for i in range(0, len(reqs), self.max_burst):
            chunk = reqs[i:i + self.max_burst]
            slots = self.submit(chunk)
            self.wait(len(chunk))
            if check:
                done += self.responses(slots)
        if check:
            bad = [r for r in done if r[0] != ACK]
            if bad:
                raise QtestError(f'{len(bad)} of {len(reqs)} requests failed: '
                                 f'{RESP_NAMES.get(bad[0][0], bad[0][0])}')

    def plugged_size(self):
        return self.qt.r('q', self._cfg_base() + 40)

    def plug(self, offset, size):
        """Plug [offset, offset+size) of the device (offsets relative to the
        device start), in requests of at most 0xffff blocks."""
        self._range(PLUG, offset, size)

    def unplug(self, offset, size):
        self._range(UNPLUG, offset, size)

    def _range(self, typ, offset, size):
        bs = self.block_size
        nb = size // bs
        addr = self.addr + offset
        while nb:
            n = min(nb, 0x8000)
            self.request(typ, addr, n)
            addr += n * bs
            nb -= n
