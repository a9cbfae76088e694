"""Start-up (called by main.py): the provisioning console, then the role the identity names.

    micropython -X heapsize=64k main.py --flash DIR [--control SOCK] [board options, HOSTBOARD.md]
        [--keepalive-s N] [--backoff-min-ms N] [--backoff-max-ms N] [--failing-s N]
        [--outbox-entries N] [--outbox-bytes N] [--heap-log]

Unprovisioned (or an identity that fails its CRC): the console only, LED "unprovisioned" (or
"error"). Provisioned: the role runs as asyncio tasks under the supervisor (restart on failure,
watchdog fed only while every task checks in), and the console stays available so a technician
can identify or read back a running unit; console writes take effect after a reboot.

Tasks: board (board.poll + console), link (MQTT session), uplink (outbox -> link), role (alarm
button or check-in point), health (heartbeat, tamper, battery), watch (watchdog).
Logs go to stderr (the same UART on a board; kept off the console's stdout on the host board).
"""

import gc
import sys

FW = 10000  # 1.0.0, SPEC section 3 packing
DEFAULTS = {"keepalive_s": 60, "backoff_min_ms": 1000, "backoff_max_ms": 60000, "failing_s": 20,
            "outbox_entries": 256, "outbox_bytes": 16384, "heap_log": 0}

heap_peak = 0
live_peak = 0


def log(msg):
    print(msg, file=sys.stderr)


def app_options(argv):
    opts = dict(DEFAULTS)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and a[2:].replace("-", "_") in opts:
            name = a[2:].replace("-", "_")
            if name == "heap_log":
                opts[name] = 1
            elif i + 1 < len(argv):
                opts[name] = int(argv[i + 1])
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


def console_only(board, root, led_state):
    import console
    from drivers.led import Led

    led = Led(board.led)
    led.set(led_state)
    c = console.Console(board, root, FW, log)
    while True:
        c.poll()
        led.poll()
        board.poll()
        if hasattr(board, "idle_ms"):
            board.idle_ms(10)


async def run_role(board, cfg, opts):
    import asyncio

    import console
    from app.uplink import Uplink
    from clock import Clock
    from heartbeat import Health
    from link import Link
    from outbox import PRIO_NORMAL, OutboxFull
    from protocol import frame
    from supervisor import Supervisor

    root = board.flash_root
    data_dir = root + "/data"
    settings = cfg["settings"]
    clock = Clock()
    up = Uplink(cfg, data_dir, clock, log, opts["outbox_entries"], opts["outbox_bytes"])
    link = Link(board, cfg, up.on_message, log, keepalive_s=opts["keepalive_s"],
                backoff_min_ms=opts["backoff_min_ms"], backoff_max_ms=opts["backoff_max_ms"])
    up.link = link
    sup = Supervisor(board, log)
    if cfg["role"] == "alarm":
        from alarm_button import AlarmButton

        role = AlarmButton(board, up, settings, log, failing_s=opts["failing_s"])
    else:
        from checkin_point import CheckinPoint

        role = CheckinPoint(board, up, settings, cfg.get("checkpoint_id") or 0, log)
    health = Health(board, up, settings, FW, log)
    up.listeners.append(SettingsKeeper(root, cfg))
    try:
        up.emit(frame.UP_BOOT, [board.reset_reason(), FW], PRIO_NORMAL)
    except OutboxFull:
        pass
    gc.collect()
    global live_peak
    live_peak = gc.mem_alloc()
    log("main: %s role up, device %s, outbox %d waiting, heap %d used" % (
        cfg["role"], link.client_id, len(up.outbox), note_heap()))
    con = console.Console(board, root, FW, log)

    async def board_task():
        n = 0
        while True:
            sup.alive("board")
            board.poll()
            con.poll()
            n += 1
            if n % 50 == 0:
                note_heap()
                if opts["heap_log"]:
                    # Bench mode: collect, so the figure is live data, not garbage waiting.
                    gc.collect()
                    live = gc.mem_alloc()
                    global live_peak
                    live_peak = max(live_peak, live)
                    log("heap: live %d live_peak %d alloc_peak %d free %d outbox %d sent %d acks %d sessions %d" % (
                        live, live_peak, heap_peak, gc.mem_free(), len(up.outbox), up.sent, up.acks, link.sessions))
            await asyncio.sleep_ms(10)

    sup.spawn("board", board_task)
    sup.spawn("link", link.run, watch=False)  # every await inside has its own deadline
    sup.spawn("uplink", lambda: up.run(sup.alive))
    sup.spawn("role", lambda: role.run(sup.alive))
    sup.spawn("health", lambda: health.run(sup.alive))
    board.app = (up, link, role, health, sup)  # for a debugger at the REPL
    await sup.watch()


class SettingsKeeper:
    """Persists settings changed by a `config` downlink into the identity (atomic save)."""

    def __init__(self, root, cfg):
        self.root = root
        self.cfg = cfg

    def on_ack(self, seq, stage):
        pass

    def on_siren(self, on, pattern, duration_s):
        pass

    def on_config(self, changed):
        import identity

        try:
            identity.save(self.root, self.cfg)
        except (identity.IdentityError, OSError) as e:
            log("main: config not saved: %r" % (e,))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    from boards import load_board

    board = load_board(argv)
    opts = app_options(argv)
    import identity

    root = board.flash_root
    if not identity.is_provisioned(root):
        log("main: not provisioned; console only")
        console_only(board, root, "unprovisioned")
    try:
        cfg = identity.load(root)
    except identity.IdentityError as e:
        log("main: identity unusable (%r); console only" % (e,))
        console_only(board, root, "error")
    gc.collect()
    import asyncio

    asyncio.run(run_role(board, cfg, opts))

