"""`fengqiao hostboard ...`: a host board you can use like a unit on your desk, from a shell.

    fengqiao hostboard start --role alarm [--name NAME] [--flash DIR]   # prints its pty and socket
    fengqiao hostboard port [--name NAME]          # just the pty: fengqiao provision --port $(...)
    fengqiao hostboard press [--times 3]           # short presses (three = cancel an alarm)
    fengqiao hostboard hold [--ms 1200]            # press and hold: raises an alarm
    fengqiao hostboard tap CARD [--ms 600]         # a patrol card (hex UID) held to the reader
    fengqiao hostboard status [--json]             # LED, buzzer, button, card, battery, network
    fengqiao hostboard wait --led stored           # until the LED shows a state (scripts, the README)
    fengqiao hostboard list
    fengqiao hostboard stop [--name NAME | --all]

A host board is the real firmware on the MicroPython Unix port (firmware/boards/HOSTBOARD.md).
`start` leaves a small daemon running (this module's `_daemon`, its own session) that owns the
board process and a null-modem pair of ptys (tools.hostboard.NullModem): the board's console is
on one side, and the path it prints (/dev/pts/N) is the other side, which `fengqiao provision
--port` opens as it would open /dev/ttyUSB0. The daemon powers the board back on when it resets
(the console's `reboot`, the watchdog) and on SIGHUP with the current firmware
(`fengqiao flash --board host --hostboard NAME`); SIGTERM (`stop`) stops it.

State lives in $FENGQIAO_HOSTBOARDS, default ./var/hostboards: NAME/state.json (daemon pid, pty,
control socket, flash dir, log), NAME/flash/ (the board's flash unless --flash), NAME/daemon.log.
Later commands find a board by --name; with one board running, --name may be left out.
The NAME defaults to the role.
"""

import json
import os
import signal
import sys
import threading
import time

from tools.errors import CliError

HELP = "start a host board (firmware on the MicroPython VM, console on a pty) and work its button, card reader, LED"

ROLES = ("alarm", "checkin")


def state_root():
    return os.path.abspath(os.environ.get("FENGQIAO_HOSTBOARDS") or os.path.join("var", "hostboards"))


def _state_path(name):
    return os.path.join(state_root(), name, "state.json")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(name):
    """The state of host board NAME (a dict) if its daemon is running, else None."""
    try:
        with open(_state_path(name), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if _pid_alive(state.get("pid", 0)) else None


def running():
    """{name: state} of the host boards whose daemons run, under state_root()."""
    root = state_root()
    out = {}
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            state = read_state(name)
            if state is not None:
                out[name] = state
    return out


def find(name=None):
    """The state of the board named, or of the only one running; CliError otherwise."""
    boards = running()
    if name is not None:
        if name not in boards:
            raise CliError("no host board %r is running under %s%s (start one: fengqiao hostboard start --role "
                           "alarm --name %s)" % (name, state_root(), "; running: " + ", ".join(boards) if boards
                                                 else "", name))
        return boards[name]
    if len(boards) == 1:
        return next(iter(boards.values()))
    if not boards:
        raise CliError("no host board is running under %s: start one with `fengqiao hostboard start --role alarm`"
                       % state_root())
    raise CliError("%d host boards are running (%s): say which with --name" % (len(boards), ", ".join(boards)))


def _client(state, timeout_s=15.0):
    """A connected control client. The board may be between a reset and its next start (the
    console's `reboot` after `fengqiao provision`, a watchdog reset, `flash --board host`): its
    daemon powers it back on, so wait for the socket while the daemon runs."""
    from tools.hostboard import HostBoard, HostBoardError

    deadline = time.monotonic() + timeout_s
    while True:
        hb = HostBoard.attach(state["flash"], state["control"])
        try:
            hb.ping()
            return hb
        except HostBoardError as exc:
            hb.stop()
            if read_state(state["name"]) is None:
                raise CliError("host board %s stopped (log %s)" % (state["name"], state.get("log"))) from exc
            if time.monotonic() > deadline:
                raise CliError("cannot reach host board %s within %.0f s: %s (log %s)"
                               % (state["name"], timeout_s, exc, state.get("log"))) from exc
        time.sleep(0.05)


# -- the daemon ------------------------------------------------------------------------------------
def _write_state(path, state):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(path + ".tmp", path)


def daemon(name, role, flash, hwid=None, heap=None):
    """Run host board NAME until SIGTERM (the body of `start`, in its own session)."""
    from tools.hostboard import HostBoard, NullModem

    path = _state_path(name)
    stop = threading.Event()
    reflash = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGHUP, lambda *a: reflash.set())
    modem = NullModem()
    state = {"name": name, "pid": os.getpid(), "role": role, "pty": modem.port, "flash": os.path.abspath(flash),
             "starts": 0, "exits": []}

    def power_on():
        # A new HostBoard each time: it runs the firmware of the current sources (as flashed).
        hb = HostBoard(flash, heap=heap, hwid=hwid, console=modem.board_fd, no_rfid=role == "alarm")
        hb.start()
        state.update(board_pid=hb.pid, control=hb.control_path, log=hb.log_path, heap=hb.heap,
                     starts=state["starts"] + 1, code_in_flash=hb.code_in_flash)
        _write_state(path, state)
        return hb

    hb = None
    try:
        hb = power_on()
        quick_exits = []
        while not stop.wait(0.2):
            if reflash.is_set():
                reflash.clear()
                hb.stop()
                hb = power_on()
            elif not hb.alive:
                # A reset (console `reboot` exits 3; the watchdog kills it): power back on, as a
                # board's chip restarts; but not for ever if it dies at once every time.
                state["exits"] = (state["exits"] + [hb.proc.returncode])[-10:]
                quick_exits = [t for t in quick_exits if time.monotonic() - t < 30] + [time.monotonic()]
                if len(quick_exits) > 5:
                    state["error"] = "the board exited 6 times within 30 s; see its log %s" % hb.log_path
                    _write_state(path, state)
                    return 1
                hb.stop()
                hb = power_on()
        return 0
    finally:
        if hb is not None:
            hb.stop()
        modem.close()
        for p in (path, path + ".tmp"):
            if os.path.exists(p):
                os.unlink(p)


# -- commands --------------------------------------------------------------------------------------
def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def cmd(name, help_text, named=True):
        p = sub.add_parser(name, help=help_text)
        if named:
            p.add_argument("--name", help="which host board (default: the only one running)")
        return p

    p = cmd("start", "start a host board and print its console pty and control socket", named=False)
    from tools.provision import role_word

    p.add_argument("--role", required=True, type=role_word, metavar="{alarm,checkin}",
                   help="alarm: button, RGB LED, buzzer; checkin: the same plus an MFRC522 card reader")
    p.add_argument("--name", help="its name for the other commands (default: the role)")
    p.add_argument("--flash", help="its flash directory (default: under the state directory; kept between runs)")
    p.add_argument("--hwid", help="hardware id (default: made up once and kept in the flash dir)")
    p.add_argument("--heap", help="MicroPython heap (default 64k with the code in ROMFS, else 256k)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="how long to wait for it to come up")
    cmd("port", "print the console pty of a host board (for --port)")
    cmd("press", "short presses of the button (three quick ones cancel an alarm)").add_argument(
        "--times", type=int, default=1, help="how many (default 1)")
    cmd("hold", "press and hold the button (1 s or more raises an alarm)").add_argument(
        "--ms", type=int, default=1200, help="how long (default 1200)")
    p = cmd("tap", "hold a card to the reader (role checkin)")
    p.add_argument("card", help="the card's UID in hex (4, 7 or 10 bytes), e.g. 04a1b2c3")
    p.add_argument("--ms", type=int, default=600, help="how long it stays in the field (default 600)")
    cmd("status", "LED, buzzer, button, card, battery and network of a host board").add_argument(
        "--json", action="store_true", help="the board's state as one JSON object")
    p = cmd("wait", "wait until the LED shows a state (exit 1 with what it shows after --timeout-s)")
    p.add_argument("--led", required=True, choices=("sending", "stored", "coming", "failing", "idle"),
                   help="sending amber blink, stored blue blink, coming steady green, failing red double flash")
    p.add_argument("--timeout-s", type=float, default=30.0, help="how long to wait (default 30)")
    cmd("list", "the host boards running", named=False)
    p = cmd("stop", "stop a host board (its flash dir is kept)")
    p.add_argument("--all", action="store_true", help="stop every host board running")


def _start(args):
    import subprocess

    name = args.name or args.role
    if "/" in name or name.startswith("."):
        raise CliError("--name %r: use letters, digits, - and _" % name)
    if read_state(name) is not None:
        raise CliError("host board %r is already running (fengqiao hostboard status --name %s); stop it first "
                       "or choose another --name" % (name, name))
    home = os.path.join(state_root(), name)
    os.makedirs(home, exist_ok=True)
    flash = os.path.abspath(args.flash or os.path.join(home, "flash"))
    log_path = os.path.join(home, "daemon.log")
    argv = [sys.executable, "-m", "tools.hostboard_cli", "_daemon", name, args.role, flash, args.hwid or "",
            args.heap or ""]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FENGQIAO_HOSTBOARDS=state_root())
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + args.timeout_s
    while True:
        state = read_state(name)
        if state is not None and state.get("pid") == proc.pid and state.get("control"):
            break
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                tail = f.read()[-1500:].decode(errors="replace")
            raise CliError("host board %r did not start (status %s); %s:\n%s" % (name, proc.returncode, log_path, tail))
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGTERM)
            raise CliError("host board %r did not come up within %.0f s (log %s)" % (name, args.timeout_s, log_path))
        time.sleep(0.05)
    print("host board %s running: %s, pid %d" % (name, "alarm button" if args.role == "alarm" else
                                                  "patrol check-in point", proc.pid))
    print("  console (pty)   %s      fengqiao provision --port %s ..." % (state["pty"], state["pty"]))
    print("  control socket  %s" % state["control"])
    print("  flash dir       %s" % state["flash"])
    print("  log             %s" % state["log"])
    print("  next: fengqiao hostboard status --name %s | hold | press | tap CARD | stop" % name)
    return 0


def _stop(state):
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _pid_alive(pid) and os.path.exists(_state_path(state["name"])):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    print("host board %s stopped (flash dir kept: %s)" % (state["name"], state["flash"]))


# Colours the LED shows besides the role's states (firmware/drivers/led.py): what they tell you.
_OTHER_COLOURS = {(1, 0, 1): "magenta flash = unprovisioned, console only (fengqiao provision --port PTY ...)",
                  (1, 1, 1): "white = a press was registered"}


def led_meaning(led, colours=()):
    """Words for the LED: led is tools.simulate.led_state(); colours the (r, g, b) it showed lately."""
    from tools.simulate import LED_MEANING

    if led in LED_MEANING:
        return LED_MEANING[led]
    words = [_OTHER_COLOURS[c] for c in sorted(set(colours)) if c in _OTHER_COLOURS]
    return "; ".join(words) if words else led


def _recent_colours(hb, window_s=2.2):
    reply = hb.request("led", since=0)
    return [tuple(v) for t, v in reply["history"] if reply["now_ms"] - t <= window_s * 1000 and any(v)]


def status_lines(state, st, led, colours=()):
    return [
        "host board %s (%s): pid %d, started %d time(s), hardware %s" % (
            state["name"], state["role"], state["board_pid"], state["starts"], st.get("hwid")),
        "  console %s   control %s" % (state["pty"], state["control"]),
        "  LED     %s (now %s)" % (led_meaning(led, colours), "rgb %d %d %d" % tuple(st["led"])
                                   if isinstance(st.get("led"), list) else st.get("led")),
        "  buzzer  %s" % ("on" if st.get("buzzer") else "off"),
        "  button  %s   card %s   case %s   battery %s mV   network %s   reset reason %s" % (
            "down" if st.get("button") else "up", st.get("card") or "none",
            "OPEN" if st.get("tamper") else "closed", st.get("battery_mv"), "up" if st.get("net") else "DOWN",
            st.get("reset_reason")),
    ]


def _control(fn):
    """Run fn() against a board, turning its errors into CliError."""
    from tools.hostboard import ControlError, HostBoardError

    try:
        return fn()
    except ControlError as exc:
        raise CliError("the host board refused: %s" % exc) from exc
    except (HostBoardError, OSError) as exc:
        raise CliError("cannot reach the host board: %s" % exc) from exc


def run(args):
    if args.action == "start":
        return _start(args)
    if args.action == "list":
        boards = running()
        for name, s in boards.items():
            print("%-12s %-8s pid %-7d %s  %s" % (name, s["role"], s["pid"], s["pty"], s["flash"]))
        if not boards:
            print("no host board running under %s" % state_root())
        return 0
    if args.action == "stop" and args.all:
        for state in running().values():
            _stop(state)
        return 0
    state = find(args.name)
    if args.action == "stop":
        _stop(state)
        return 0
    if args.action == "port":
        print(state["pty"])
        return 0
    hb = _client(state)
    try:
        if args.action == "press":
            if args.times < 1:
                raise CliError("--times must be 1 or more")
            steps = []
            for _ in range(args.times):
                steps += [(1, 150), (0, 200)]
            _control(lambda: hb.button_script(steps))
            print("pressed %d time(s)" % args.times)
        elif args.action == "hold":
            _control(lambda: hb.hold(args.ms))
            print("holding the button for %d ms" % args.ms)
        elif args.action == "tap":
            if state["role"] != "checkin":
                raise CliError("host board %s has no card reader (role %s): start one with --role checkin"
                               % (state["name"], state["role"]))
            _control(lambda: hb.card(args.card))
            time.sleep(args.ms / 1000.0)  # the card stays in the field this long, as a hand holds it
            _control(hb.remove_card)
            print("card %s held to the reader for %d ms" % (args.card, args.ms))
        elif args.action == "wait":
            from tools.simulate import led_state

            deadline = time.monotonic() + args.timeout_s
            while True:
                led = _control(lambda: led_state(hb))
                if led == args.led:
                    break
                if time.monotonic() > deadline:
                    raise CliError("the LED of host board %s did not show %s within %.0f s; it shows: %s"
                                   % (state["name"], args.led, args.timeout_s,
                                      led_meaning(led, _control(lambda: _recent_colours(hb)))))
                time.sleep(0.1)
            print("host board %s: LED %s" % (state["name"], led_meaning(led)))
        elif args.action == "status":
            from tools.simulate import led_state

            st = _control(hb.state)
            led = _control(lambda: led_state(hb))
            colours = _control(lambda: _recent_colours(hb))
            if args.json:
                st = {k: v for k, v in st.items() if k != "ok"}
                print(json.dumps(dict(st, name=state["name"], role=state["role"], pty=state["pty"],
                                      control=state["control"], flash=state["flash"], led_state=led,
                                      led_meaning=led_meaning(led, colours)), sort_keys=True))
            else:
                print("\n".join(status_lines(state, st, led, colours)))
        return 0
    finally:
        hb.stop()  # an attached client: closes the control connection only (no board process here)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "_daemon":
        _n, _role, _flash, _hwid, _heap = sys.argv[2:]
        sys.exit(daemon(_n, _role, _flash, _hwid or None, _heap or None))
    sys.exit("usage: fengqiao hostboard ... (this module's _daemon is started by `fengqiao hostboard start`)")
