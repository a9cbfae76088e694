# The provisioning console's byte stream on stdin/stdout: the USB CDC or UART REPL stream on a
# board (boards/mcu.py). Reads never block. (The host board is its own console, with the same
# quirks: boards/host.py.)
#
# Quirk: a stream's read(n) blocks until n bytes arrive (MicroPython streams loop until full), so
# we read one byte at a time, and only while poll() says one is ready.
# Quirk: Ctrl-C (0x03) on the REPL stream still raises KeyboardInterrupt, on purpose: mpremote
# needs it to break in and re-flash a running board. The console protocol is text, never 0x03.

import select
import sys


class StdConsole:
    def __init__(self, stream_in=None, stream_out=None):
        sin = stream_in or sys.stdin
        self._in = getattr(sin, "buffer", sin)
        sout = stream_out or sys.stdout
        self._out = getattr(sout, "buffer", sout)
        self._poll = select.poll()
        self._poll.register(self._in, select.POLLIN)
        self._one = bytearray(1)
        self._chunk = bytearray(0)
        self.closed = False

    def read(self, n=64):
        """Up to n bytes that are already waiting (bytes), or None."""
        if self.closed:
            return None
        if len(self._chunk) < n:
            self._chunk = bytearray(n)  # reused: one buffer, not a growing one per call
        buf = self._chunk
        k = 0
        while k < n:
            ev = self._poll.poll(0)
            if not ev or not (ev[0][1] & select.POLLIN):
                if ev and ev[0][1] & (select.POLLHUP | select.POLLERR):
                    self._close()
                break
            try:
                got = self._in.readinto(self._one)
            except OSError:
                got = 0  # a pty whose other side went away reports EIO
            if not got:
                self._close()
                break
            buf[k] = self._one[0]
            k += 1
        return bytes(buf[:k]) if k else None

    def _close(self):
        # End of input (stdin at EOF, pty hung up): stop polling it instead of spinning.
        self.closed = True
        try:
            self._poll.unregister(self._in)
        except (OSError, ValueError, KeyError):
            pass

    def write(self, data):
        try:
            self._out.write(data)
            if hasattr(self._out, "flush"):
                self._out.flush()
        except OSError:
            pass  # nobody listening: a console reply is not worth crashing the unit for
