# The host board: the same application on the MicroPython Unix port, with flash as a directory,
# the console on stdin/stdout and every part (button, tamper, LED, buzzer, battery, MFRC522 and
# card) simulated and driven through a control socket. Spec: boards/HOSTBOARD.md.
#
#     micropython -X heapsize=64k main.py --flash DIR [--control SOCK] [--hwid ID] [--single-led]
#                                         [--no-rfid] [--wdt] [--battery-mv N]
#
# Failures it survives: a control client that sends garbage (error reply, connection kept), one
# that disconnects mid-line (dropped), more clients than slots (refused), stdin at EOF (the
# console stops polling it).
#
# RAM: this module is test equipment sharing the application's 64 KB heap, so it is written as
# lean as a real board's support package (measured on the Unix port, 64-bit, code in ROMFS,
# qstr pool pre-grown: ~2.9 KB after import; it was 5.1 KB plus 0.9 KB for boards.stdconsole and
# the wiring dict). Hence:
# - the board is its own console (read/write on stdin/stdout, the quirks of boards/stdconsole.py);
# - one dispatch over the ops, replies written as JSON text (no per-reply dicts, no qstr per key);
# - option and op names live in one string each; attributes reuse names the VM already has
#   (the table in Board below says what each one is);
# - the reader simulation and the software watchdog are imported only when used;
# - the `hog` op (fault injection: hold N bytes of the heap, or all of it but N, so that the
#   application's allocations fail at whatever instant they come; tools/bench_memfault.py) costs
#   one module global (None) until it is used: +32 B live after boot.

import json
import os
import select
import socket
import sys
import time
from array import array

from micropython import const

_MV = const(4000)  # battery at start (mV) unless --battery-mv
_VERSION = const(0x92)  # the simulated MFRC522's VersionReg (v2.0)
_MAX_CLIENTS = const(4)
_MAX_LINE = const(2048)
_LED_RING = const(64)  # LED changes kept (one u32 each): 256 B
_BUZZER_RING = const(256)  # buzzer changes kept: 1 KB; clients count them with len(history)
# Options with a value, then flags (argv "--name", or the same names without "--" in a dict).
_OPTS = const("--flash --control --hwid --battery-mv --single-led --no-rfid --wdt")
# The reply texts, split at "|" when a request is served: one constant instead of one per text
# (each distinct string constant is an object in the heap).
_TEXT = const(
    '{"ok": true, "now_ms": %d|, "hwid": %s, "flash": %s|no reader (--no-rfid)|kind: lockup or glitch|mv: 0..20000|, "on": %d, %s"count": %d, "history": [|"rgb": [%d, %d, %d], |, "hwid": %s, "button": %d, "tamper": %d, "battery_mv": %d, "net": %s, "led": [%d, %d, %d], "buzzer": %d, "reset_reason": %d, "card": %s, "reader_reinits": %d|, "alloc": %d, "free": %d|unknown op %s|bad request: %r|{"ok": false, "error": %s}\n|"too many clients"|"line too long"'
)
_T_OK = const(0)
_T_PING = const(1)
_T_NO_READER = const(2)
_T_KIND = const(3)
_T_MV = const(4)
_T_OUT = const(5)
_T_RGB = const(6)
_T_STATE = const(7)
_T_MEM = const(8)
_T_UNKNOWN = const(9)
_T_BAD = const(10)
_T_ERROR = const(11)
_T_CLIENTS = const(12)
_T_LONG = const(13)
# The ops of the control channel, in the order of the dispatch in Board.poll.
_OPS = const("ping press release hold button_script card reader_fault battery tamper net led buzzer state mem hog")


_STDIN = getattr(sys.stdin, "buffer", sys.stdin)  # the console's input
# What the `hog` op holds, None when nothing is: [release ticks or None, bytes to leave free or
# None, the pieces taken as a chain [bytearray, [bytearray, ... None]], bytes still to take once]
# (poll() takes them).
_hog = None


class _Out:
    # The LED or the buzzer: v, its value as bits r<<2|g<<1|b (buzzer: 0/1); k, its kind (7 RGB
    # LED, 1 single LED, 0 buzzer); n, changes so far; e, the history: one u32 per change,
    # t_ms << 3 | v (t_ms wraps after 6.2 days), a ring allocated at its full size at boot;
    # t, the board (for its clock). The first version, a list of tuples, grew to ~25 KB.
    # t, k and e are set by Board.__init__ (no __init__ here: one function object less).
    v = n = 0

    def rgb(self, r=0, g=0, b=0):
        v = (4 if r else 0) | (2 if g else 0) | (1 if b else 0)
        if v and self.k < 7:
            v = 7 if self.k else 1  # a single LED shows any colour as white; the buzzer is on
        if v != self.v:
            self.v = v
            e = (time.ticks_diff(time.ticks_ms(), self.t.t) & 0x1FFFFFFF) << 3 | v
            self.e[self.n % (_LED_RING if self.k else _BUZZER_RING)] = e
            self.n += 1

    off = rgb  # rgb() with its defaults: all off

    def on(self):
        self.rgb(1, 1, 1)


def _send(sock, data, o=None, k=0):
    # One reply line: `data`; for led / buzzer (o, the _Out) then its changes from index k as
    # JSON text, 4 changes per piece (~80 B: a full history never sits in the heap at once, and a
    # running 64 KB heap has few free pieces of 300 B), and the
    # "]}\n" that closes the history and the reply.
    # A client that stops reading must not hang the board: at most 2 s per piece.
    sock.settimeout(2)
    if o is not None:
        ring = _LED_RING if o.k else _BUZZER_RING
        k = max(k, o.n - ring, 0)
    try:
        while data:
            data = data.encode()
            while data:
                data = data[sock.send(data):]
            if o is not None:
                if k < o.n:
                    part = []
                    for k in range(k, min(k + 4, o.n)):
                        e = o.e[k % ring]
                        x = e & 7
                        part.append("[%d, [%d, %d, %d]]" % (e >> 3, x >> 2, x >> 1 & 1, x & 1) if o.k else
                                    "[%d, %d]" % (e >> 3, x))
                    k += 1
                    data = ", ".join(part) + (", " if k < o.n else "")
                else:
                    data, o = "]}\n", None
    except OSError:
        pass  # gone or stuck: the reply is lost, its next recv() (or EOF) drops it
    sock.setblocking(False)


class Board:
    # Attributes: short names the VM already has (no qstrs), and at most 17 of them with the
    # runtime's board.app (an instance's attribute table grows 17 -> 23 -> 29 slots of 16 B):
    #   flash_root, led, buzzer, console (itself)            the board interface
    #   t      ticks_ms() at start (board time 0)           r      reset reason at boot
    #   hwid   hardware id                                   open   tamper: case open
    #   steps  the button: None up, (t0, None) pressed, (t0, [(level, ms), ...]) a script from t0
    #   mv     battery mV                                    up     network up
    #   chip   simulated MFRC522 (None: not made yet, False: --no-rfid); chip.reader its driver
    #   wdt    watchdog (None: not made yet, False: no --wdt)
    #   closed stdin at EOF (the console)                    poller stdin + control sockets
    #   clients  control socket -> bytearray of its pending input; the listening socket -> None
    name = "host"

    def __init__(self, argv=None):
        a = sys.argv[1:] if argv is None else argv
        o = [None] * 7  # _OPTS in order
        for k, n in enumerate(_OPTS.split()):
            if type(a) is dict:
                o[k] = a.get(n[2:])
            elif n in a:
                i = a.index(n)
                if k > 3:
                    o[k] = True
                elif i + 1 < len(a):  # options the board does not know belong to the app
                    o[k] = a[i + 1]
        self.t = time.ticks_ms()
        root = o[0] or "hostflash"
        if root[0] != "/":
            root = os.getcwd() + "/" + root
        self.flash_root = root
        meta = root + "/.hostboard/"
        for d in (root, root + "/data", meta):
            try:
                os.mkdir(d)
            except OSError:
                pass
        h = o[2]
        if not h:
            try:
                with open(meta + "hwid") as f:
                    h = f.read().strip()
            except OSError:
                pass
        if not h:
            h = "host-" + "".join("%02x" % b for b in os.urandom(6))
            with open(meta + "hwid", "w") as f:
                f.write(h)
        self.hwid = h
        try:
            with open(meta + "reset_reason") as f:
                h = f.read().strip()
            os.remove(meta + "reset_reason")
        except OSError:
            h = ""
        self.r = int(h) if h.isdigit() else 0
        self.open = 0
        self.steps = None
        self.mv = int(o[3] or _MV)
        self.up = True
        self.led = _Out()
        self.buzzer = _Out()
        for x, k in ((self.led, 1 if o[4] else 7), (self.buzzer, 0)):
            # the ring at its full size now, at boot: an array grown by append() is reallocated
            # every few changes, and each move left a hole in the heap that a long-running board
            # (taps, reconnects) could not reuse -- free heap fell by ~3 KB over a few hundred changes
            x.t, x.k, x.e = self, k, array("I", bytes(4 * (_LED_RING if k else _BUZZER_RING)))
        self.chip = False if o[5] else None
        self.wdt = None if o[6] else False
        self.console = self
        self.closed = False
        self.poller = p = select.poll()
        p.register(_STDIN, select.POLLIN)
        self.clients = {}
        if o[1]:
            path = o[1]
            try:
                os.remove(path)
            except OSError:
                pass
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # The Unix port takes a raw struct sockaddr_un: sa_family (native u16, little-endian
            # here) + path + NUL.
            s.bind(bytes((socket.AF_UNIX, 0)) + path.encode() + bytes(1))
            s.listen(_MAX_CLIENTS)
            s.setblocking(False)
            self.clients[s] = None
            p.register(s, select.POLLIN)

    # -- the board interface ------------------------------------------------------------------
    def hardware_id(self):
        return self.hwid

    def reset_reason(self):
        return self.r

    def button(self):
        s = self.steps
        if s is None or s[1] is None:
            return 0 if s is None else 1
        dt = time.ticks_diff(time.ticks_ms(), s[0])
        for level, ms in s[1]:
            if dt < ms:
                return level
            dt -= ms
        self.steps = None
        return 0

    def tamper(self):
        return self.open

    def battery_mv(self):
        return self.mv

    def rfid(self):
        c = self.chip
        if c is None:
            from boards.sim_mfrc522 import SimMFRC522

            c = self.chip = SimMFRC522(_VERSION)
        if not c:
            return None
        if c.reader is None:
            from drivers.mfrc522 import MFRC522

            c.reader = MFRC522(c, c.cs, c.rst, time.sleep_ms)
        return c.reader

    def network_up(self, cfg=None):
        return self.up

    def rssi(self):
        return None

    def watchdog(self, ms):
        if self.wdt is None:
            from boards.host_wdt import SoftWatchdog

            self.wdt = SoftWatchdog(self, ms)
        return self.wdt or None

    def reboot(self):
        # A real board resets; the host board exits with status 3 and its driver restarts it,
        # with reset reason 4 (soft reset) waiting for the next boot (host_wdt.py writes 2).
        # A reset allocates nothing: what the hog holds goes first (the supervisor reboots after
        # MemoryErrors), and a reason that cannot be written is lost (reason 0), never the exit.
        global _hog
        _hog = None
        try:
            import gc

            gc.collect()
            with open(self.flash_root + "/.hostboard/reset_reason", "w") as f:
                f.write("4")
        except (MemoryError, OSError):
            pass
        sys.exit(3)

    def idle_ms(self, ms):
        """Sleep up to ms, waking at once for control or console input."""
        if not self.clients and self.closed:
            time.sleep_ms(ms)
        else:
            self.poller.poll(ms)
        self.poll()

    # -- the console (boards/stdconsole.py on a real board): reads never block ----------------
    def read(self, n=64):
        """Up to n bytes that are already waiting (bytes), or None. One byte at a time, and only
        while poll() says one is ready: a stream's read(n) blocks until n bytes arrive."""
        out = bytearray()
        while not self.closed and len(out) < n:
            ev = got = 0
            for obj, e in self.poller.ipoll(0):
                if obj is _STDIN:
                    ev = e
            if ev & select.POLLIN:
                one = bytearray(1)
                try:
                    got = _STDIN.readinto(one)
                except OSError:
                    pass  # a pty whose other side went away reports EIO
            elif not ev & (select.POLLHUP | select.POLLERR):
                break  # nothing waiting
            if not got:
                # End of input (stdin at EOF, pty hung up): stop polling it instead of spinning.
                self.closed = True
                self.poller.unregister(_STDIN)
                break
            out.extend(one)
        return bytes(out) if out else None

    def write(self, data):
        out = getattr(sys.stdout, "buffer", sys.stdout)
        try:
            out.write(data)
            out.flush()
        except (OSError, AttributeError):
            pass  # nobody listening: a console reply is not worth crashing the unit for

    # -- control socket (HOSTBOARD.md) ----------------------------------------------------------
    def poll(self):
        global _hog
        h = _hog
        if h:
            if h[0] is not None and time.ticks_diff(time.ticks_ms(), h[0]) >= 0:
                _hog = None  # its time is up (board time): the next collection frees it
            else:
                # take h[3] bytes (once), or all the free heap but h[1] bytes (again after every
                # collection that freed some: the application's garbage and transient buffers
                # never give it room for long), greedily in pieces, halving the piece at each
                # MemoryError (a fragmented heap has no single piece that big), each piece in a
                # 2-item list [piece, next] (no big list of slots: that needs a big free piece)
                import gc

                n = h[3] or (gc.mem_free() - h[1] if h[1] is not None else 0)
                s = n
                h[3] = 0
                while n > 0 and s >= 16:
                    try:
                        x = bytearray(min(s, n))
                        h[2] = [x, h[2]]
                        n -= len(x)
                    except MemoryError:
                        s //= 2
        if self.wdt:
            self.wdt.poll()
        if not self.clients:
            return
        for conn, _ in self.poller.poll(0):
            if conn not in self.clients:
                continue  # stdin: read() reads it
            buf = self.clients[conn]
            if buf is None:  # the listening socket
                try:
                    conn = conn.accept()[0]
                except OSError:
                    continue
                if len(self.clients) > _MAX_CLIENTS:
                    t = _TEXT.split("|")
                    _send(conn, t[_T_ERROR] % t[_T_CLIENTS])
                    conn.close()
                    continue
                conn.setblocking(False)
                self.clients[conn] = bytearray()
                self.poller.register(conn, select.POLLIN)
                continue
            try:
                data = conn.recv(64)  # small pieces: a 64 KB heap is fragmented, requests are short
            except OSError:
                data = b""
            if not data:
                self.poller.unregister(conn)
                del self.clients[conn]
                conn.close()
                continue
            buf.extend(data)
            while True:
                nl = buf.find(10)  # "\n"
                if nl < 0:
                    if len(buf) > _MAX_LINE:
                        t = _TEXT.split("|")
                        _send(conn, t[_T_ERROR] % t[_T_LONG])
                        buf[:] = bytearray()
                    break
                line = bytes(buf[:nl])
                buf[:] = buf[nl + 1:]
                if not line.strip():
                    continue
                o, k = None, 0
                t = _TEXT.split("|")
                try:
                    r = json.loads(line)
                    op = r["op"]
                    ops = _OPS.split()
                    i = ops.index(op) if op in ops else -1
                    out = t[_T_OK] % time.ticks_diff(time.ticks_ms(), self.t)
                    if i < 0:
                        out = None
                        data = t[_T_ERROR] % json.dumps(t[_T_UNKNOWN] % op)
                    elif i == 0:  # ping
                        out += t[_T_PING] % (json.dumps(self.hwid), json.dumps(self.flash_root))
                    elif i < 3:  # press, release
                        self.steps = (0, None) if i == 1 else None
                    elif i < 5:  # hold, button_script
                        steps = [[1, r["ms"]]] if i == 3 else r["steps"]
                        self.steps = (time.ticks_ms(), [(1 if s[0] else 0, int(s[1])) for s in steps])
                    elif i < 7:  # card, reader_fault
                        if self.chip is None:
                            from boards.sim_mfrc522 import SimMFRC522

                            self.chip = SimMFRC522(_VERSION)
                        if not self.chip:
                            raise ValueError(t[_T_NO_READER])
                        if i == 6:
                            k = r["kind"]
                            if k == "lockup":
                                self.chip.locked = True
                            elif k == "glitch":
                                self.chip.glitch()
                            else:
                                raise ValueError(t[_T_KIND])
                        else:
                            u = r.get("uid")
                            self.chip.present(u and bytes.fromhex(u), r.get("uid2") and bytes.fromhex(r["uid2"]))
                    elif i == 7:  # battery
                        mv = r["mv"]
                        if type(mv) is not int or not 0 <= mv <= 20000:
                            raise ValueError(t[_T_MV])
                        self.mv = mv
                    elif i == 8:  # tamper
                        self.open = 1 if r["open"] else 0
                    elif i == 9:  # net
                        self.up = bool(r["up"])
                    elif i < 12:  # led, buzzer: the history goes out as text, a piece at a time
                        o = self.buzzer if i == 11 else self.led
                        v = o.v
                        out += t[_T_OUT] % (v > 0, t[_T_RGB] % (v >> 2, v >> 1 & 1, v & 1) if i == 10 else "", o.n)
                        k = int(r.get("since", 0))
                    elif i == 12:  # state
                        c = self.chip.card if self.chip else None
                        v = self.led.v
                        out += t[_T_STATE] % (
                            json.dumps(self.hwid), self.button(), self.open, self.mv, json.dumps(self.up), v >> 2, v >> 1 & 1,
                            v & 1, self.buzzer.v, self.r, json.dumps(c.uid.hex() if c else None),
                            self.chip.reader.reinits if self.chip and self.chip.reader else 0)
                    else:  # mem, hog: whatever was held is let go first; the new hold is
                        import gc  # taken by the next poll(), after this reply (it needs heap)

                        if i > 13:
                            _hog = None
                            gc.collect()
                            n, v, ms = int(r.get("bytes", 0)), r.get("leave"), int(r.get("ms", 0))
                            if n > 0 or v is not None:
                                _hog = [time.ticks_add(time.ticks_ms(), ms) if ms > 0 else None,
                                        None if v is None else int(v), None, n]
                        elif r.get("collect"):
                            gc.collect()
                        out += t[_T_MEM] % (gc.mem_alloc(), gc.mem_free())
                    if out:
                        data = out if o else out + "}\n"
                except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
                    o = None
                    data = t[_T_ERROR] % json.dumps(t[_T_BAD] % e)
                _send(conn, data, o, k)
