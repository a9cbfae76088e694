"""The tool side of the provisioning console (firmware/CONSOLE.md) over a serial port (pyserial).

    with SerialConsole("/dev/ttyUSB0") as con:
        info = con.identify()                  # raises NotFengqiao if nothing Fengqiao answers
        fp = con.write_config(cfg)             # DeviceError("already_provisioned", ...) if it has one
        cfg = con.read_config()                # key replaced by key_fingerprint

    check_port("/dev/ttyUSB0")                 # PortError(reason=...) before anything else is done

Exceptions (all subclass ConsoleError):
    PortError       the port does not exist / cannot be opened; .reason is one of "not_found",
                    "not_a_tty", "no_permission", "busy", "open_failed"
    ConsoleTimeout  no reply to a request in time
    NotFengqiao     something answered, but not a Fengqiao console (or nothing framed at all)
    DeviceError     the unit answered ok=false; .code is the CONSOLE.md error code

One request at a time. A reply with `"id": null` and a framing error code means the unit could
not read our line (noise on the cable): the request is sent again (at most `retries` times) and a
reply to any of its copies is accepted, so a write that did land is not reported as a failure.
Lines without the `FQ1 ` prefix (boot messages, logs) are kept in `.noise`, never parsed.
"""

import json
import os
import time
import zlib

PREFIX = b"FQ1 "
_RETRY_CODES = ("bad_frame", "bad_crc", "bad_json", "too_long")


class ConsoleError(Exception):
    """Base of the console client's errors."""


class PortError(ConsoleError):
    """The serial port is absent or cannot be opened (.reason says which way, see the module doc)."""

    def __init__(self, message, reason="open_failed"):
        super().__init__(message)
        self.reason = reason


_PORT_HINT = "find the unit's port with ls /dev/ttyUSB* /dev/ttyACM* (a host board's: fengqiao hostboard port)"


def _tty_majors():
    """{major: (first minor, last minor)} of the kernel's tty drivers (/proc/tty/drivers); None
    when that file cannot be read (then a character device is taken to be a tty)."""
    try:
        with open("/proc/tty/drivers", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and parts[2].isdigit():
            lo, _, hi = parts[3].partition("-")
            if lo.isdigit():
                out.setdefault(int(parts[2]), []).append((int(lo), int(hi) if hi.isdigit() else int(lo)))
    return out


def check_port(port):
    """Say what is wrong with a serial port before anything else is tried, without opening it:
    PortError with reason "not_found", "not_a_tty" (a plain file, a directory, /dev/null) or
    "no_permission" (naming the group that may open it). check_port_free() then tells "busy"."""
    import grp
    import stat

    if not port:
        raise PortError("no serial port given: " + _PORT_HINT, "not_found")
    try:
        st = os.stat(port)
    except FileNotFoundError:
        raise PortError("serial port %s does not exist: is the board plugged in? %s" % (port, _PORT_HINT[0].upper() + _PORT_HINT[1:]),
                        "not_found") from None
    except OSError as exc:
        raise PortError("cannot look at %s: %s" % (port, exc)) from exc
    if not stat.S_ISCHR(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "a plain file" if stat.S_ISREG(st.st_mode) else \
            "not a character device"
        raise PortError("%s is not a serial port (it is %s): %s" % (port, what, _PORT_HINT), "not_a_tty")
    majors = _tty_majors()
    if majors is not None:
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        if not any(lo <= minor <= hi for lo, hi in majors.get(major, ())):
            raise PortError("%s is not a serial port (a character device %d,%d that is no tty): %s"
                            % (port, major, minor, _PORT_HINT), "not_a_tty")
    if not os.access(port, os.R_OK | os.W_OK):
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = "gid %d" % st.st_gid
        raise PortError("no permission to open %s: it may be opened by its owner and the group %s; add yourself to "
                        "that group (sudo usermod -aG %s $USER) and log in again" % (port, group, group),
                        "no_permission")


HOSTBOARD_CABLE = b"tools.hostboard_cli\0_daemon\0"  # the command line of the process holding a host board's pty


def _holders(port):
    """Names and pids of other processes that have `port` open (those this user may see)."""
    real = os.path.realpath(port)
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else ()):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
            if any(os.path.realpath("/proc/%s/fd/%s" % (pid, fd)) == real for fd in fds):
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if HOSTBOARD_CABLE in f.read():
                        continue  # a host board's null modem (`fengqiao hostboard start`): the cable, not a program
                with open("/proc/%s/comm" % pid) as f:
                    out.append("%s (pid %s)" % (f.read().strip(), pid))
        except OSError:
            continue
    return out


def check_port_free(port, any_open=False):
    """PortError("busy") when another program has the port locked, as mpremote, esptool-style
    tools, pyserial with exclusive=True (this client too) and uucp lock-file users (screen,
    minicom: /var/lock/LCK..NAME) do; with any_open, also when another process has it open at all
    (Linux /proc, the processes this user may see: a plain open(), cat; `fengqiao deploy` and
    `fengqiao device` ask this). Not by default: a test harness that holds a pty's other end for a
    tool it runs is not another program talking to the unit. Opens the port for a moment
    (O_NONBLOCK, no controlling tty)."""
    import errno
    import fcntl

    for lock_dir in ("/var/lock", "/run/lock"):
        lock = os.path.join(lock_dir, "LCK.." + os.path.basename(port))
        try:
            with open(lock, encoding="ascii", errors="replace") as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid > 0 and pid != os.getpid() and os.path.exists("/proc/%d" % pid):
            raise PortError("%s is busy: process %d holds its lock file %s (screen or minicom?); close it first"
                            % (port, pid, lock), "busy")
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise PortError("%s is busy (%s); close the program that has it open" % (port, exc), "busy") from exc
        raise PortError("cannot open %s: %s" % (port, exc)) from exc
    try:
        if not os.isatty(fd):
            raise PortError("%s is not a serial port (no tty): %s" % (port, _PORT_HINT), "not_a_tty")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            others = _holders(port)
            raise PortError("%s is busy: another program has it locked%s; close it first (only one program can "
                            "talk to a unit at a time)" % (port, " (%s)" % ", ".join(others) if others else ""),
                            "busy") from exc
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    others = _holders(port) if any_open else None  # open without a lock (a plain open(), cat)
    if others:
        raise PortError("%s is busy: %s has it open; close it (mpremote, screen, minicom, a second fengqiao?) and "
                        "try again" % (port, ", ".join(others)), "busy")


class ConsoleTimeout(ConsoleError):
    """No reply in time."""


class NotFengqiao(ConsoleError):
    """The device on the port does not speak the Fengqiao console."""


class DeviceError(ConsoleError):
    """The unit refused a request; .code is the error code, .detail its text."""

    def __init__(self, code, detail=""):
        super().__init__("%s: %s" % (code, detail) if detail else code)
        self.code = code
        self.detail = detail


class FrameDecodeError(ConsoleError):
    """A line with the prefix that is not a valid frame (damaged reply)."""


def new_nonce():
    """A request nonce (CONSOLE.md): 16 hex digits, fresh per state-changing request."""
    return os.urandom(8).hex()


def crc_hex(body):
    return "%08x" % (zlib.crc32(body) & 0xFFFFFFFF)


def encode(obj):
    body = json.dumps(obj, separators=(", ", ": ")).encode()
    return PREFIX + body + b" " + crc_hex(body).encode() + b"\n"


def decode(line):
    line = line.rstrip(b"\r\n ")
    if not line.startswith(PREFIX):
        raise FrameDecodeError("no FQ1 prefix")
    body, _, crc = line[len(PREFIX):].rpartition(b" ")
    if len(crc) != 8 or crc_hex(body).encode() != crc.lower():
        raise FrameDecodeError("bad CRC")
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise FrameDecodeError("bad JSON") from exc
    if not isinstance(obj, dict):
        raise FrameDecodeError("not an object")
    return obj


class SerialConsole:
    def __init__(self, port, baud=115200, timeout_s=5.0, retries=2):
        self.port = port
        self.baud = baud
        self.timeout_s = timeout_s
        self.retries = retries
        self.ser = None
        self.noise = []  # lines that were not frames (what a non-Fengqiao device says)
        self.last_selftest = None
        self._buf = bytearray()
        self._id = int.from_bytes(os.urandom(2), "big")

    # -- port ------------------------------------------------------------------------------------
    def open(self):
        import serial

        check_port(self.port)
        try:
            # exclusive: a lock (flock) as mpremote takes, so two tools never talk to one unit at once
            self.ser = serial.Serial(self.port, self.baud, timeout=0.05, write_timeout=self.timeout_s, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            text = str(exc)
            if "exclusively lock" in text:
                raise PortError("%s is busy: another program has it locked%s; close it first"
                                % (self.port, " (%s)" % ", ".join(_holders(self.port)) if _holders(self.port) else ""),
                                "busy") from exc
            if "ermission" in text:
                hint = " (add yourself to the dialout group)"
            elif "ioctl" in text or "directory" in text:
                hint = " (that is not a serial port: pick the unit's /dev/ttyUSB* or /dev/ttyACM*)"
            else:
                hint = ""
            raise PortError("cannot open %s: %s%s" % (self.port, exc, hint)) from exc
        # End any half line the unit holds from before (a blank line is ignored by the console),
        # then drop whatever was already waiting (boot messages, stale replies).
        self._write(b"\n")
        self._drain(0.15)
        return self

    def close(self):
        if self.ser is not None:
            try:
                self.ser.close()
            finally:
                self.ser = None

    def __enter__(self):
        return self.open() if self.ser is None else self

    def __exit__(self, *exc):
        self.close()

    def _write(self, data):
        import serial

        try:
            self.ser.write(data)
            self.ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise PortError("writing to %s failed: %s" % (self.port, exc)) from exc

    def _drain(self, quiet_s):
        end = time.monotonic() + quiet_s
        while time.monotonic() < end:
            if self._read_chunk():
                end = time.monotonic() + quiet_s
        for line in self._buf.split(b"\n"):
            if line.strip() and not line.startswith(PREFIX):
                self.noise.append(line.decode(errors="replace")[:200])
        self._buf = bytearray()

    def _read_chunk(self):
        import serial

        try:
            data = self.ser.read(max(1, self.ser.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise PortError("reading from %s failed: %s" % (self.port, exc)) from exc
        if data:
            self._buf.extend(data)
        return bool(data)

    def _readline(self, deadline):
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if time.monotonic() > deadline:
                return None
            self._read_chunk()

    # -- requests --------------------------------------------------------------------------------
    def request(self, cmd, timeout_s=None, **fields):
        """The ok reply dict for `cmd`; raises DeviceError / ConsoleTimeout / PortError."""
        if self.ser is None:
            self.open()
        sent = []
        self.last_attempts = 0
        for attempt in range(self.retries + 1):
            self.last_attempts = attempt + 1
            self._id = (self._id + 1) & 0x7FFFFFFF
            sent.append(self._id)
            req = dict(fields, id=self._id, cmd=cmd)
            self._write(encode(req))
            deadline = time.monotonic() + (timeout_s or self.timeout_s)
            while True:
                line = self._readline(deadline)
                if line is None:
                    break  # timed out: send again
                if not line.strip():
                    continue
                if not line.startswith(PREFIX):
                    self.noise.append(line.decode(errors="replace")[:200])
                    continue
                try:
                    reply = decode(line)
                except FrameDecodeError:
                    break  # our reply was damaged on the way: ask again
                if "ok" not in reply:
                    continue  # our own request echoed back by a terminal in cooked mode
                rid = reply.get("id")
                if rid in sent:
                    if reply.get("ok") is True:
                        return reply
                    raise DeviceError(str(reply.get("error")), str(reply.get("detail", "")))
                if rid is None and reply.get("error") in _RETRY_CODES:
                    break  # the unit could not read our line: send it again
                # a stale reply to an earlier request: skip it
        raise ConsoleTimeout("no reply to %r from %s after %d attempts" % (cmd, self.port, len(sent)))

    def identify(self):
        try:
            info = self.request("identify")
        except ConsoleTimeout as exc:
            said = "; it said: %r" % self.noise[-1] if self.noise else " (it sent nothing)"
            raise NotFengqiao("no Fengqiao console answered on %s%s. Is this a Fengqiao unit with its "
                              "firmware flashed (`fengqiao flash`)?" % (self.port, said)) from exc
        except DeviceError as exc:
            raise NotFengqiao("the device on %s answered identify with an error: %s" % (self.port, exc)) from exc
        if info.get("product") != "fengqiao" or info.get("proto") != 1:
            raise NotFengqiao("the device on %s is %r protocol %r, not a Fengqiao unit (protocol 1)"
                              % (self.port, info.get("product"), info.get("proto")))
        return info

    def write_config(self, cfg, nonce=None):
        """Write an identity; the key fingerprint the unit computed. Every copy of the request
        carries one nonce (a fresh one unless given: a rerun that knows the first run's nonce
        passes it), which the unit stores with the identity: a copy whose reply was lost is
        answered from what landed ("repeat"), never applied twice. A unit without nonces (an
        older firmware) refuses the repeat with already_provisioned: the read-back decides then,
        our key there means the first copy landed."""
        nonce = nonce or new_nonce()
        try:
            return self.request("write_config", cfg=cfg, nonce=nonce)["key_fingerprint"]
        except DeviceError as exc:
            if exc.code != "already_provisioned" or self.last_attempts < 2:
                raise
            import hashlib

            ours = hashlib.sha256(bytes.fromhex(cfg["key"])).hexdigest()[:16]
            back = self.read_config()
            if back.get("key_fingerprint") != ours or back.get("device_id") != cfg.get("device_id"):
                raise
            return ours

    def rekey(self, cfg, nonce=None, timeout_s=None):
        """A new key id and key for the provisioned unit in one step (CONSOLE.md `rekey`; of cfg only
        device_id, key_id and key are sent, the unit keeps the rest): its old identity or the new
        one, never neither, and its outbox kept. The unit resets after the
        reply; the port is reopened and the new identity is confirmed by the nonce, so a reply
        lost in the reset (or a cable pulled) is not taken for a failure. Returns the fingerprint."""
        nonce = nonce or new_nonce()

        def ask():  # only the key: the unit keeps the rest of its identity
            return self.request("rekey", device_id=cfg["device_id"], key_id=cfg["key_id"], key=cfg["key"], nonce=nonce)

        try:
            reply = ask()
        except (ConsoleTimeout, PortError):
            # the reset took the line down before the reply (or the cable went): ask again once it
            # answers; a copy that landed is answered "repeat" by the new identity
            reply = self.after_reset(ask, timeout_s)
        if reply.get("rebooting"):
            self.after_reset(lambda: self.request("identify"), timeout_s)  # back, on the new key
        return reply["key_fingerprint"]

    def after_reset(self, call, timeout_s=None):
        """call() once the unit answers again after a reset (the port may vanish and come back, as
        a board's USB CDC port does); ConsoleTimeout after timeout_s (default 3 x the timeout)."""
        deadline = time.monotonic() + (timeout_s or 3 * self.timeout_s)
        while True:
            try:
                self.close()
                self.open()
                return call()
            except (ConsoleTimeout, PortError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # polling for the port to come back

    def read_config(self):
        return self.request("read_config")["cfg"]

    def factory_reset(self, hwid):
        return self.request("factory_reset", confirm=hwid)

    def selftest(self):
        self.last_selftest = self.request("selftest", timeout_s=max(self.timeout_s, 10))
        return self.last_selftest

    def reboot(self):
        try:
            return self.request("reboot", timeout_s=2)
        except (ConsoleTimeout, PortError):
            return None  # the reset may take the line down before the reply gets out
