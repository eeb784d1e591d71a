#!/usr/bin/env python3
"""Ask a vhost-user backend how many memory regions (memslots) it accepts.

    scripts/vhost-user-slots.py SOCKET

connects to the backend's unix socket as QEMU would, sends
VHOST_USER_GET_MAX_MEM_SLOTS (docs/interop/vhost-user.rst) and prints the
answer, e.g. "509".  QEMU lets virtio-mem devices with dynamic-memslots=on use
several memslots only if every vhost backend accepts at least 509.  Backends
serve one front-end at a time: ask before QEMU connects (virtiofsd exits when
the connection closes; start it again).  Exit status 1 if the backend does not
answer.
"""

import socket
import struct
import sys

GET_MAX_MEM_SLOTS = 36
VERSION = 0x1
REPLY = 0x4


def max_mem_slots(path, timeout=10):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(struct.pack('<III', GET_MAX_MEM_SLOTS, VERSION, 0))
        data = b''
        while len(data) < 20:
            chunk = s.recv(20 - len(data))
            if not chunk:
                raise OSError('the backend closed the connection')
            data += chunk
    req, flags, size, slots = struct.unpack('<IIIQ', data)
    if req != GET_MAX_MEM_SLOTS or not flags & REPLY or size != 8:
        raise OSError(f'unexpected reply: request {req}, flags {flags:#x}, '
                      f'size {size}')
    return slots


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        print(max_mem_slots(argv[1]))
    except OSError as exc:
        print(f'vhost-user-slots: {argv[1]}: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
