"""The test guest's serial command channel (ttyS1), shared by the VM harness
(tests/lib/vmguest.py) and the libvirt suite (tests/libvirt/run.py).

Protocol (scripts/build-guest.sh): we send one shell command line, the guest
runs it with "sh -c" and answers with its output, "\\n@@END <rc>@@\\n".  The
guest prints "@@READY@@" whenever its /init is ready (after every boot).

    chan = GuestChannel(sock, alive=lambda: qemu_running, error=MyError)
    chan.wait_ready(120)
    rc, out = chan.run('grep MemTotal /proc/meminfo')
"""

import re
import select
import time

READY = b'@@READY@@\n'
END_RE = re.compile(rb'\n@@END (-?\d+)@@\n')


class GuestChannel:
    """A connected socket to the guest's command channel.

    `alive()` says whether QEMU still runs (checked while waiting);
    `error(message)` makes the exception every failure raises.
    """

    def __init__(self, sock, alive, error=RuntimeError):
        self.sock = sock
        self.alive = alive
        self.error = error
        self.buf = b''

    def close(self):
        self.sock.close()

    def clear(self):
        """Forget what was received (e.g. before a reset)."""
        self.buf = b''

    def read_until(self, pattern, timeout, what):
        """Read until `pattern` (bytes or regex) matches the received data;
        returns its index (bytes) or the match (regex)."""
        deadline = time.monotonic() + timeout
        while True:
            if isinstance(pattern, bytes):
                idx = self.buf.find(pattern)
                if idx >= 0:
                    return idx
            else:
                m = pattern.search(self.buf)
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.error(f'timeout ({timeout}s) waiting for {what}; '
                                 f'channel received: {self.buf[-500:]!r}')
            if not self.alive():
                raise self.error(f'QEMU died while waiting for {what}')
            ready, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if ready:
                try:
                    data = self.sock.recv(65536)
                except OSError as exc:
                    raise self.error(f'command channel failed while waiting '
                                     f'for {what}: {exc}') from exc
                if not data:
                    raise self.error(f'command channel closed while '
                                     f'waiting for {what}')
                self.buf += data

    def wait_ready(self, timeout):
        """Wait for the guest's ready marker (after boot or a reset)."""
        idx = self.read_until(READY, timeout, 'the guest ready marker')
        self.buf = self.buf[idx + len(READY):]

    def run(self, cmd, timeout, check=False):
        """Run one shell command line in the guest -> (rc, output).

        With check=True a non-zero exit status raises.  After a timeout the
        channel is out of step: tear the VM down.
        """
        if '\n' in cmd or '\r' in cmd:
            raise ValueError('guest commands must be a single line')
        try:
            self.sock.sendall(cmd.encode() + b'\n')
        except OSError as exc:
            raise self.error(f'cannot send guest command {cmd!r}: '
                             f'{exc}') from exc
        m = self.read_until(END_RE, timeout, f'guest command {cmd!r}')
        out = self.buf[:m.start()].decode('utf-8', 'replace')
        rc = int(m.group(1))
        self.buf = self.buf[m.end():]
        if check and rc != 0:
            raise self.error(f'guest command {cmd!r} exited {rc}:\n{out}')
        return rc, out
