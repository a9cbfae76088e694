"""Start-up (called by main.py): the provisioning console, then the role the identity names.

    micropython -X heapsize=64k main.py --flash DIR [--control SOCK] [board options, HOSTBOARD.md]
        [--keepalive-s N] [--backoff-min-ms N] [--backoff-max-ms N] [--failing-s N]
        [--outbox-entries N] [--outbox-bytes N] [--heap-log]

Unprovisioned (or an identity that fails its CRC): the console only, LED "unprovisioned" (or
"error"). Provisioned: the role runs as tasks (tasks.py) under the supervisor (restart on failure,
watchdog fed only while every task checks in), and the console stays available so a technician
can identify or read back a running unit; console writes take effect after a reboot.

Tasks: board (board.poll, the console, the role's step and the health step (heartbeat, tamper,
battery), every 10 ms; it also checks in for the link, link_alive()), link (MQTT session),
uplink (outbox -> link), and the supervisor's watchdog.
Logs go to stderr (the same UART on a board; kept off the console's stdout on the host board).

RAM (64 KB heap goal, LINK.md "Memory"): the identity module is imported to read the identity
and dropped from sys.modules before the role's modules are imported (the console and a `config`
downlink import it again for a moment, console/__init__.py); the role and the health checks are
stepped by the board task (a task is a Task, a supervisor frame and its own frame, ~0.5 KB);
one App object holds
what the board task and the settings listener need (no closures, no lambdas).
"""

import gc
import sys

from micropython import const

_FW = const(10000)  # 1.0.0, SPEC section 3 packing

# Options, "--name N" ("--heap-log" takes no value; "_" may stand for "-"), in the order of the
# opts list start() receives; defaults in options().
_OPTS = const("keepalive-s backoff-min-ms backoff-max-ms failing-s outbox-entries outbox-bytes heap-log")
_KEEPALIVE_S = const(0)
_BACKOFF_MIN_MS = const(1)
_BACKOFF_MAX_MS = const(2)
_FAILING_S = const(3)
_ENTRIES = const(4)
_BYTES = const(5)
_HEAP_LOG = const(6)
_REQUEST_MODULES = const(5)  # the most modules a console request imports (rekey: console/__init__.py)

heap_peak = 0
live_peak = 0


def log(msg):
    print(msg, file=sys.stderr)


def options(argv):
    names = _OPTS.split()
    opts = [60, 1000, 60000, 20, 256, 16384, 0]
    i = 0
    while i < len(argv):
        a = argv[i][2:].replace("_", "-")
        if argv[i][:2] == "--" and a in names:
            k = names.index(a)
            if k == _HEAP_LOG:
                opts[k] = 1
            elif i + 1 < len(argv):
                opts[k] = int(argv[i + 1])
                i += 1
        i += 1
    return opts


def note_heap():
    """Track the GC high-water mark (sampled: the heap in use just before each collection)."""
    global heap_peak
    used = gc.mem_alloc()
    if used > heap_peak:
        heap_peak = used
    return used


def link_alive(sup, link):
    """The link's check-in, made by the board task (link.run() has no check-in hook of its own):
    alive while a session is up (its PINGREQ/PINGRESP deadline ends a dead one) and while it has
    no socket (the back-off sleep, up to 1.5 x backoff_max_ms, and network_up/mqtt.open, which
    have deadlines); a socket that never becomes a session (CONNACK/SUBACK, bounded by the link's
    own _OP_MS) is the one state with no check-in, so a link stuck there for stall_ms starves
    the watchdog."""
    if link.up or link.conn is None:
        sup.alive("link")


def console_only(board, state):
    import console
    from drivers.led import Led

    led = Led(board.led)
    led.set(state)
    c = console.Console(board, board.flash_root, _FW, log)
    while True:
        c.poll()
        led.poll()
        board.poll()
        if hasattr(board, "idle_ms"):
            board.idle_ms(10)


class App:
    """The board task (board, console and role polled every 10 ms) and an uplink listener that
    keeps settings changed by a `config` downlink in the identity (atomic save)."""

    def __init__(self, board, cfg, up, sup, role, health, heap_log):
        from console import Console

        self.board = board
        self.cfg = cfg
        self.up = up  # up.link: the Link
        self.sup = sup
        self.role = role
        self._h = health  # the Health object, stepped by run() as the role is
        self.heap_log = heap_log
        self.console = Console(board, board.flash_root, _FW, log, cfg)
        self.console.clock = up.clock  # `fengqiao device check` reads it through identify

    def on_ack(self, *args):
        pass  # acks and sirens are the role's business

    on_siren = on_ack

    def on_config(self, changed):
        from console import drop

        try:
            from identity.file import write

            write(self.board.flash_root, self.cfg)  # as it is: only the settings changed
        except Exception as e:  # IdentityError, OSError; MemoryError: the unit runs on regardless
            log("main: config not saved: %r" % (e,))
        finally:
            drop()

    async def run(self):
        import tasks

        global live_peak
        sup, board, con, role, up = self.sup, self.board, self.console, self.role, self.up
        n = 0
        while True:
            sup.alive("board")
            link_alive(sup, up.link)
            board.poll()
            con.poll()
            role.step()
            self._h.step()
            n += 1
            if n % 50 == 0:
                note_heap()
                if self.heap_log:
                    # Bench mode: collect, so the figure is live data, not garbage waiting.
                    gc.collect()
                    live = gc.mem_alloc()
                    live_peak = max(live_peak, live)
                    log("heap: live %d live_peak %d alloc_peak %d free %d outbox %d sent %d acks %d sessions %d" % (
                        live, live_peak, heap_peak, gc.mem_free(), len(up.outbox), up.sent, up.acks,
                        up.link.sessions))
            await tasks.sleep_ms(10)

    # The other watched tasks, as the supervisor starts them (a method, not a closure per task).
    def uplink(self):
        return self.up.run(self.sup.alive)


def start(board, cfg, opts):
    """Build the unit and spawn its tasks; returns the supervisor (its watch() is the main task)."""
    from link import Link

    # The link first: with TLS it needs two pieces of the heap in one piece each (mbedTLS parses
    # the CA into ~3 KB; the TLS socket's reserve, mqtt.py), which a heap has for certain only
    # before the rest of the unit is built. (Seen: built after the outbox and the role, a board
    # restarted with events queued could not parse its CA at 64 KB.)
    link = Link(board, cfg, None, log, keepalive_s=opts[_KEEPALIVE_S],
                backoff_min_ms=opts[_BACKOFF_MIN_MS], backoff_max_ms=opts[_BACKOFF_MAX_MS])
    gc.collect()
    from app.uplink import Uplink
    from clock import Clock
    from heartbeat import Health
    from outbox import PRIO_NORMAL, OutboxFull
    from protocol import frame
    from supervisor import Supervisor

    gc.collect()
    settings = cfg["settings"]
    up = Uplink(cfg, board.flash_root + "/data", Clock(), log, opts[_ENTRIES], opts[_BYTES])
    link.on_message = up.on_message
    up.link = link
    sup = Supervisor(board, log)
    gc.collect()
    if cfg["role"] == "alarm":
        from alarm_button import AlarmButton

        role = AlarmButton(board, up, settings, opts[_FAILING_S])
    else:
        from checkin_point import CheckinPoint

        role = CheckinPoint(board, up, settings, cfg.get("checkpoint_id") or 0, log)
    gc.collect()
    app = App(board, cfg, up, sup, role, Health(board, up, settings, _FW, log), opts[_HEAP_LOG])
    up.listeners.append(app)
    try:
        up.emit(frame.UP_BOOT, [board.reset_reason(), _FW], PRIO_NORMAL)
    except OutboxFull:
        pass
    # sys.modules' table is one piece of the heap, and a console request makes it grow: its
    # modules (up to 5, a rekey) take it past 29 entries, and the table of 37 slots (592 B on the
    # 64-bit port) was then needed in a running heap, whose free space is in small pieces (seen:
    # MemoryError allocating 592 bytes, a check-in point at 56 KB). Grown now, at boot, it is
    # the size the first request would have left it anyway. (Small-int keys: nothing else made.)
    m = sys.modules
    for k in range(_REQUEST_MODULES):
        m[k] = None
    for k in range(_REQUEST_MODULES):
        del m[k]
    gc.collect()
    global live_peak
    live_peak = gc.mem_alloc()
    log("main: %s role up, device %s, outbox %d waiting, heap %d used" % (
        cfg["role"], link.client_id, len(up.outbox), note_heap()))
    sup.spawn("board", app.run)
    sup.spawn("link", link.run)  # watched: checked in by the board task (link_alive)
    sup.spawn("uplink", app.uplink)
    return sup


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    from boards import load_board

    board = load_board(argv)
    import console
    import identity

    try:
        cfg = identity.load(board.flash_root)
    except identity.IdentityError as e:
        cfg = e
    console.drop()  # the identity module is not needed again until a console request
    del identity, console
    if type(cfg) is not dict:
        log("main: %s; console only" % cfg.args[1])
        console_only(board, "unprovisioned" if cfg.args[0] == "not_provisioned" else "error")
    opts = options(argv)  # a bad option is the caller's mistake: it ends here, no reboot
    gc.collect()
    import tasks

    try:
        tasks.run(start(board, cfg, opts).watch())
    except Exception as e:  # noqa: BLE001 - a unit must never stop at a prompt (issue 11)
        # Whatever ends the event loop (a MemoryError while the unit is built, a bug) ends in a
        # reset, as the watchdog would, never in a unit that looks on but is dead: the outbox
        # and the sequence counter are on flash and resend after the reboot.
        gc.collect()
        try:
            log("main: %s %r" % ("stopped: reboot", e))
        except MemoryError:
            pass
        board.reboot()
