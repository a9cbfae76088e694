"""Driver for host boards (CPython): start one, work its simulated hardware, cut its power.

A host board is the firmware on the MicroPython Unix port (firmware/boards/host.py), with flash
as a directory and a control socket (firmware/boards/HOSTBOARD.md). This module is what tests,
`fengqiao simulate` and the demo use:

    with HostBoard(flash_dir, heap="64k") as hb:      # starts main.py, waits for the socket
        hb.hold(1200)                                  # press and hold the button for 1.2 s
        hb.wait_led("on", timeout_s=5)
        hb.card("04a1b2c3d4e5f6")                      # a 7-byte UID in the field
        hb.kill9(); hb.restart()                       # power cut, power back

    provision_dir(flash_dir, cfg)                      # write an identity file for a test

The board runs from a compiled image (tools.flash.build_image: firmware + protocol device code,
mpy-cross'd), as a real board does: compiling source at import time does not fit a 64 KB heap.
By default the code sits in "flash": the image is packed as ROMFS (tools.flash.build_romfs) and
tools/romfs_launch.py maps it into the MicroPython process, which imports the .mpy files from
/rom in place, as an ESP32 or Pico W with a ROMFS partition does; the heap then holds only what
a board's heap holds. That needs the pip-packaged Unix port (`micropython_run`); with another
`micropython` binary ($FENGQIAO_MICROPYTHON, a native build on PATH) or HostBoard(romfs=False) or
FENGQIAO_ROMFS=0 the board imports plain .mpy files from the image directory instead, and the
bytecode takes heap (a bigger -X heapsize is needed, see firmware/boards/HOSTBOARD.md).
Errors: HostBoardError (did not start, socket gone); ControlError (the board refused an op).
"""

import binascii
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

from tools.testing.micropython import micropython_binary
from tools.testing.procs import WaitTimeout, wait_for

__all__ = ["HostBoard", "HostBoardError", "ControlError", "NullModem", "provision_dir", "encode_identity",
           "key_fingerprint", "DEFAULT_SETTINGS", "board_heap"]


class HostBoardError(RuntimeError):
    """The host board process did not start, died, or its control socket went away."""


class ControlError(RuntimeError):
    """The board answered a control request with ok=false (message = its error text)."""


# Mirrors firmware/identity.py (the file format is specified in firmware/CONSOLE.md).
DEFAULT_SETTINGS = {"heartbeat_interval_s": 300, "checkin_repeat_s": 600, "hold_ms": 1000, "low_battery_mv": 3400}


def key_fingerprint(key):
    """First 8 bytes of SHA-256(key) in hex: what the device, the label and the gateway show."""
    return hashlib.sha256(bytes(key)).hexdigest()[:16]


def encode_identity(cfg):
    """The bytes of <flash>/data/identity.cfg for cfg (key as bytes or 64 hex digits)."""
    doc = {
        "device_id": cfg["device_id"], "key_id": cfg.get("key_id", 1), "role": cfg["role"],
        "wifi_ssid": cfg.get("wifi_ssid", ""), "wifi_password": cfg.get("wifi_password", ""),
        "broker_host": cfg.get("broker_host", "127.0.0.1"), "broker_port": cfg.get("broker_port", 1883),
        "tls": cfg.get("tls", False), "ca_pem": cfg.get("ca_pem"),
        "checkpoint_id": cfg.get("checkpoint_id"), "pins": cfg.get("pins", {}),
        "settings": dict(DEFAULT_SETTINGS, **cfg.get("settings", {})), "v": 1,
    }
    key = cfg["key"]
    doc["key"] = key if isinstance(key, str) else binascii.hexlify(bytes(key)).decode()
    if len(doc["key"]) != 64:
        raise ValueError("key must be 32 bytes")
    line = json.dumps(doc).encode()
    return line + b"\n" + ("%08x" % (binascii.crc32(line) & 0xFFFFFFFF)).encode() + b"\n"


def provision_dir(flash_dir, cfg):
    """Write the identity file a provisioned unit has, directly into a host board's flash dir
    (for tests; `fengqiao provision` does it through the console). Returns the key fingerprint."""
    data = os.path.join(str(flash_dir), "data")
    os.makedirs(data, exist_ok=True)
    path = os.path.join(data, "identity.cfg")
    with open(path + ".tmp", "wb") as f:
        f.write(encode_identity(cfg))
    os.replace(path + ".tmp", path)
    key = cfg["key"]
    return key_fingerprint(bytes.fromhex(key) if isinstance(key, str) else key)


ROMFS_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "romfs_launch.py")


def romfs_available():
    """True when host boards can run their code from ROMFS: the `micropython` in use is the pip
    package's in-process wrapper (not an explicit or native binary), its `micropython_run` is
    importable here, and FENGQIAO_ROMFS is not "0"."""
    import importlib.util

    if os.environ.get("FENGQIAO_ROMFS", "1") == "0" or os.environ.get("FENGQIAO_MICROPYTHON"):
        return False
    if importlib.util.find_spec("micropython_run") is None:
        return False
    try:
        with open(micropython_binary(), "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    except RuntimeError:  # no `micropython` command at all: the launcher needs only micropython_run
        return True
    return head.startswith(b"#!") and b"micropython_unix" in head


def board_heap():
    """The heap a HostBoard gets by default (heap=None), for callers that want it up front: a
    board's 64 KB when its code runs from flash (ROMFS), as on an ESP32 or Pico W; 256 KB when
    it cannot (the bytecode then sits in the heap too: firmware/boards/HOSTBOARD.md)."""
    return "64k" if romfs_available() else "256k"


def image_run_argv(script, args=(), heap="1m", romfs=None, image=None):
    """(argv, env, cwd) to run a MicroPython script against the host image the way host boards
    run it: with the code in ROMFS (only the image and the frozen modules importable) when
    romfs_available(), else plain .mpy files from the image directory. For helpers such as the
    firmware bench's prefill and code-size probes, so their figures match the board's."""
    from tools.flash import build_image, build_romfs

    image = image or build_image("host")
    romfs = romfs_available() if romfs is None else romfs
    env = dict(os.environ, MICROPYPATH=image + ":.frozen")
    if romfs:
        argv = [sys.executable, ROMFS_LAUNCHER, build_romfs("host"), "-X", "heapsize=%s" % heap,
                os.path.abspath(str(script))]
    else:
        argv = [micropython_binary(), "-X", "heapsize=%s" % heap, str(script)]
    return argv + [str(a) for a in args], env, image


def _uid_hex(uid):
    if isinstance(uid, (bytes, bytearray)):
        return uid.hex()
    return str(uid).replace(":", "").replace(" ", "").lower()


class HostBoard:
    """One host board process and a client for its control socket."""

    def __init__(self, flash_dir, control_path=None, entry="main.py", heap=None, hwid=None,
                 args=(), console=None, log_path=None, image=None, single_led=False, no_rfid=False,
                 wdt=False, env=None, romfs=None):
        self.flash_dir = os.path.abspath(str(flash_dir))
        os.makedirs(self.flash_dir, exist_ok=True)
        # Unix socket paths are limited to 107 bytes: keep them short, beside the flash dir.
        self.control_path = control_path or os.path.join(os.path.dirname(self.flash_dir),
                                                         os.path.basename(self.flash_dir)[:40] + ".ctl")
        if len(self.control_path.encode()) > 100:
            # sockaddr_un holds 108 bytes: fall back to a short, per-flash-dir name in /tmp.
            digest = hashlib.sha256(self.flash_dir.encode()).hexdigest()[:16]
            self.control_path = "/tmp/fq-%s.ctl" % digest
        self.entry = entry
        self.hwid = hwid
        self.args = list(args)
        self.console = console  # None: stdin /dev/null; "pipe"; or an fd (e.g. a pty slave)
        self.log_path = log_path or self.flash_dir + ".log"
        self._image = image
        self.flags = [f for f, on in (("--single-led", single_led), ("--no-rfid", no_rfid), ("--wdt", wdt)) if on]
        self.env = env
        # ROMFS of the current sources by default; a caller's own image= directory runs as files.
        self.romfs = (romfs_available() and image is None) if romfs is None else bool(romfs)
        # heap None: a board's 64 KB from ROMFS, 256 KB when the bytecode sits in the heap too.
        self.heap = heap or ("64k" if self.romfs else "256k")
        self._romfs_image = None
        self.proc = None
        self._sock = None
        self._rfile = None
        self._log = None
        self.starts = 0

    @classmethod
    def attach(cls, flash_dir, control_path):
        """A client for a board another process runs (`fengqiao hostboard`, tools/hostboard_cli.py):
        the control methods work; start/stop/kill9 do not (this process has no board process)."""
        return cls(flash_dir, control_path=control_path)

    # -- process ------------------------------------------------------------------------------
    @property
    def image(self):
        if self._image is None:
            from tools.flash import build_image
            self._image = build_image("host")
        return self._image

    @property
    def romfs_image(self):
        """The ROMFS file the board maps as its flash (only when self.romfs)."""
        if self._romfs_image is None or not os.path.exists(self._romfs_image):
            # (again if an old image was pruned while this board was off: the current sources)
            from tools.flash import build_romfs
            self._romfs_image = build_romfs("host")
        return self._romfs_image

    @property
    def code_in_flash(self):
        """True: the code runs in place from ROMFS (heap = data); False: plain .mpy files in the heap."""
        return self.romfs

    def argv(self):
        if self.romfs:
            module = self.entry  # a module of the image ("main.py" -> main), or a script file's path
            if not os.path.isabs(module) and module.endswith(".py"):
                module = module[:-3].replace("/", ".")
            argv = [sys.executable, ROMFS_LAUNCHER, self.romfs_image, "-X", "heapsize=%s" % self.heap, module,
                    "--flash", self.flash_dir, "--control", self.control_path]
        else:
            argv = [micropython_binary(), "-X", "heapsize=%s" % self.heap, os.path.join(self.image, self.entry),
                    "--flash", self.flash_dir, "--control", self.control_path]
        if self.hwid:
            argv += ["--hwid", self.hwid]
        return argv + self.flags + self.args

    def start(self, timeout_s=15):
        if self.alive:
            raise HostBoardError("already running (pid %d)" % self.proc.pid)
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)  # a stale socket from a killed run would accept nothing
        env = dict(os.environ if self.env is None else self.env)
        env["MICROPYPATH"] = self.image  # the image only: never the source tree (ROMFS: the launcher sets it)
        argv = self.argv()
        self._log = open(self.log_path, "ab")
        self._log.write(("hostboard: %s, heap %s\n" % (
            "code in flash (ROMFS %s)" % os.path.basename(self.romfs_image) if self.romfs else
            "code in the heap (plain .mpy files from %s: no micropython_run for ROMFS, or romfs=False)"
            % self.image, self.heap)).encode())
        self._log.flush()
        if self.console == "pipe":
            stdin, stdout = subprocess.PIPE, subprocess.PIPE
        elif isinstance(self.console, int):
            stdin = stdout = self.console
        else:
            stdin, stdout = subprocess.DEVNULL, self._log
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=self._log,
                                     env=env, cwd=self.image, start_new_session=True)
        self.starts += 1
        self._con_buf = b""
        try:
            wait_for(self._connect, timeout_s, "host board %s to open its control socket %s (log: %s)"
                     % (self.flash_dir, self.control_path, self.log_path))
        except WaitTimeout:
            self.kill9()
            raise
        return self

    def _connect(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise HostBoardError("host board exited with status %s during start-up; log %s:\n%s"
                                 % (self.proc.returncode, self.log_path, self.log_tail()))
        if not os.path.exists(self.control_path):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(self.control_path)
        except OSError:
            s.close()
            return False
        self._sock = s
        self._rfile = s.makefile("rb")
        return True

    def log_tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _close_client(self):
        for obj in (self._rfile, self._sock):
            if obj is not None:
                try:
                    obj.close()
                except OSError:
                    pass
        self._rfile = self._sock = None

    def kill9(self):
        """Cut the power: SIGKILL, no chance to flush or close anything."""
        # the process goes first, so a request in flight on another thread sees the board's end
        # of the socket close (EOF) rather than its own file object closed under it
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_client()
        self._close_log()

    def stop(self, timeout_s=5):
        """Polite stop (SIGTERM, then SIGKILL); for tearing down, not for power-cut tests."""
        self._close_client()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass

    def restart(self, timeout_s=15, reset_reason=None):
        """Power back on with the same flash dir (kill -9 first if still running)."""
        self.kill9()
        if reset_reason is not None:
            meta = os.path.join(self.flash_dir, ".hostboard")
            os.makedirs(meta, exist_ok=True)
            with open(os.path.join(meta, "reset_reason"), "w") as f:
                f.write(str(int(reset_reason)))
        return self.start(timeout_s)

    def console_request(self, cmd, timeout_s=10, **fields):
        """One console request over the stdin/stdout pipes (console="pipe"); the reply dict.
        (For a pty and retries use tools.serialconsole.SerialConsole on a NullModem port.)"""
        import select

        from tools.serialconsole import PREFIX, decode, encode

        if self.console != "pipe":
            raise HostBoardError("console_request needs HostBoard(..., console='pipe')")
        self._req_id = getattr(self, "_req_id", 0) + 1
        self.proc.stdin.write(encode(dict(fields, id=self._req_id, cmd=cmd)))
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        buf = getattr(self, "_con_buf", b"")
        fd = self.proc.stdout.fileno()  # raw reads: a buffered readline could hide lines from select
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(PREFIX):
                    reply = decode(line)
                    if reply.get("id") == self._req_id:
                        self._con_buf = buf
                        return reply
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            data = os.read(fd, 4096)
            if not data:
                raise HostBoardError("console closed (board exited: %s)" % self.proc.poll())
            buf += data
        self._con_buf = buf
        raise HostBoardError("no console reply to %r within %.1fs" % (cmd, timeout_s))

    def wait_exit(self, timeout_s=10):
        return self.proc.wait(timeout_s)

    def __enter__(self):
        return self.start() if not self.alive else self

    def __exit__(self, *exc):
        self.stop()

    # -- control client ----------------------------------------------------------------------
    def request(self, op, **fields):
        """Send one control request; the reply dict (raises ControlError on ok=false)."""
        if self._sock is None:
            if self.proc is not None and not self.alive:
                raise HostBoardError("host board is not running (log: %s)" % self.log_path)
            if not self._connect():
                raise HostBoardError("cannot connect to %s" % self.control_path)
        fields["op"] = op
        # local references: a power-cut test calls kill9() from another thread, which closes the
        # client under a reader blocked in readline (CPython then raises ValueError, not OSError)
        sock, rfile = self._sock, self._rfile
        try:
            sock.sendall(json.dumps(fields).encode() + b"\n")
            line = rfile.readline()
        except (OSError, ValueError) as exc:
            self._close_client()
            raise HostBoardError("control socket failed during %r (alive=%s): %s: %s"
                                 % (op, self.alive, type(exc).__name__, exc)) from exc
        if not line:
            self._close_client()
            raise HostBoardError("host board closed the control socket during %r (alive=%s); log:\n%s"
                                 % (op, self.alive, self.log_tail()))
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "failed"))
        return reply

    def ping(self):
        return self.request("ping")

    def press(self):
        self.request("press")

    def release(self):
        self.request("release")

    def hold(self, ms):
        """Press now and release after ms, timed by the board (not by this process)."""
        self.request("hold", ms=int(ms))

    def tap(self, ms=120):
        self.hold(ms)

    def button_script(self, steps):
        """Raw button levels over time, e.g. [(1, 5), (0, 3), (1, 4), (0, 0)] (level, ms)."""
        self.request("button_script", steps=[[int(l), int(ms)] for l, ms in steps])

    def card(self, uid, uid2=None):
        """Put a card with this UID (bytes or hex, 4/7/10 bytes) in the reader's field; with
        uid2, two cards at once (a collision: the reader reads neither)."""
        if uid2 is None:
            self.request("card", uid=_uid_hex(uid))
        else:
            self.request("card", uid=_uid_hex(uid), uid2=_uid_hex(uid2))

    def remove_card(self):
        self.request("card", uid=None)

    def battery(self, mv):
        self.request("battery", mv=int(mv))

    def tamper(self, open=True):
        self.request("tamper", open=bool(open))

    def network(self, up):
        self.request("net", up=bool(up))

    def reader_fault(self, kind="lockup"):
        """"lockup": the MFRC522 stops answering until its RST pin is pulsed; "glitch": its
        registers fall back to reset values (a brown-out)."""
        self.request("reader_fault", kind=kind)

    def state(self):
        return self.request("state")

    def led(self):
        """Current LED colour as (r, g, b), each 0/1."""
        return tuple(self.request("led", since=1 << 30)["rgb"])

    def led_history(self, since=0):
        """[(t_ms, (r, g, b))] of LED changes (t_ms: board ms since start), oldest first."""
        return [(t, tuple(v)) for t, v in self.request("led", since=since)["history"]]

    def buzzer(self):
        return self.request("buzzer", since=1 << 30)["on"]

    def buzzer_history(self, since=0):
        return [(t, v) for t, v in self.request("buzzer", since=since)["history"]]

    def wait_led(self, state, timeout_s=5.0):
        """Wait until the LED shows `state`: "on", "off" or an (r, g, b) tuple."""
        def match():
            rgb = self.led()
            if state == "on":
                return any(rgb)
            if state == "off":
                return not any(rgb)
            return rgb == tuple(state)
        return wait_for(match, timeout_s, "LED of %s to be %s" % (self.flash_dir, state), interval_s=0.01)

    def wait_buzzer(self, on, timeout_s=5.0):
        return wait_for(lambda: bool(self.buzzer()) == bool(on), timeout_s,
                        "buzzer of %s to be %s" % (self.flash_dir, "on" if on else "off"), interval_s=0.01)


class NullModem:
    """Two pseudo-terminals joined back to back, like `socat pty,raw pty,raw` or a null-modem
    cable: a host board's console goes on one slave (`board_fd`), and a tool opens the other by
    its path (`port`, a /dev/pts/N) as it would open /dev/ttyUSB0. Both slaves are in raw mode.

    Hooks for tests, each optional and settable while it runs: `from_board(data) -> data` (a
    noisy cable from the unit), and `cable(data, from_board) -> data`, called for every chunk in
    both directions (after from_board), which forwards what it returns: b"" drops the chunk, so
    a hook that starts returning b"" is a cable pulled at that byte (tools/tests/
    test_deploy_resume.py's CutAt)."""

    def __init__(self, board_raw=True, from_board=None, cable=None):
        import threading
        import tty

        self._m1, self.board_fd = os.openpty()
        self._m2, self._s2 = os.openpty()
        if board_raw:  # board_raw=False leaves the board's side cooked (echo, CRLF): a robustness test
            tty.setraw(self.board_fd)
        tty.setraw(self._s2)
        self.port = os.ttyname(self._s2)
        self.from_board = from_board  # optional bytes -> bytes: a noisy cable, for tests
        self.cable = cable  # optional (bytes, from_board) -> bytes: both ways; b"" drops (a cut)
        self._stop = False
        self.bytes_to_board = 0
        self.bytes_from_board = 0
        self._thread = threading.Thread(target=self._pump, name="nullmodem", daemon=True)
        self._thread.start()

    def _pump(self):
        import select

        while not self._stop:
            try:
                ready, _, _ = select.select([self._m1, self._m2], [], [], 0.05)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    time.sleep(0.01)  # EIO while nobody holds that side open
                    continue
                from_board = fd == self._m1
                other = self._m2 if from_board else self._m1
                if from_board:
                    self.bytes_from_board += len(data)
                    if self.from_board is not None:
                        data = self.from_board(data)
                else:
                    self.bytes_to_board += len(data)
                cable = self.cable
                if cable is not None:
                    data = cable(data, from_board)
                if not data:
                    continue
                try:
                    os.write(other, data)
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self._thread.join(2)
        for fd in (self._m1, self._m2, self.board_fd, self._s2):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
