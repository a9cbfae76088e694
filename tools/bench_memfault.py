"""`fengqiao bench memfault`: MemoryErrors injected while a host board sends; nothing it took is
lost, no sequence number is reused, every press (or card) is stored in the end (issue 11, item 2).

For each role (alarm, checkin), one unit: the bench scenario's parts (tools/bench_firmware.py:
the project's Mosquitto, a ScriptedGateway that acks every frame, the unit provisioned and
`--prefill` events queued through the firmware's own code, the real firmware on the MicroPython
Unix port in a 64 KB heap). Then, cycle after cycle:

1. the role's action, so that an event is stored and sent: a hold of the button (4 s, timed by
   the board: a person holds until the chirp, and the board task may be down for a 1 s restart
   meanwhile) or a new card in the reader's field;
2. after a random 0..2 s, the injection: the host board's `hog` control op
   (firmware/boards/HOSTBOARD.md) takes all of the free heap but a random 0..`--margin` bytes,
   again after every collection that freed some, for a random 0.3..3 s (one injection in
   `--long-every`: 6..8 s, long enough for a task to fail 5 times in a row and the supervisor
   to reboot the board). The application's allocations, wherever they come (the MQTT read, the
   outbox append, the frame, a log line), meet MemoryError whenever a collection cannot find
   them room;
3. the board lets go by itself (board time). A board that exited with status 3 (the
   supervisor's reboot) is powered on again with the same flash directory, as its reset would;
   any other exit is a crash (a violation: a real board would sit dead until its hardware
   watchdog reset it), and it is powered on again too;
4. the bench waits (30 s at most) for the action's event at the gateway. An action that a
   reboot or crash cut off before it was stored (its event has not come 8 s after the power-on:
   the hold and the card end with the process, and a press kept in RAM after a MemoryError dies
   with it, as alarm_button.py says) is made again, as the person would on seeing the light:
   counted in `actions_repeated`. One that never arrives is a violation.

An injection counts as an injected failure when at least one MemoryError appeared in the
board's log after it, or the board rebooted or crashed (a MemoryError whose own log line did not
fit), before the next injection (a reboot noticed only in the next cycle is still this
injection's); cycles run until `--injections` of them have (at most 4 x as many cycles).

At the end the hog is released and the outbox drains (the heap log says `outbox 0`); then:
- `acked_events_lost`: events the unit took (acknowledged as stored: emit returned) that never
  reached the gateway: the prefilled ones (their seqs) and one boot event per power-on. Must be 0;
- `seq_reused`: a sequence number seen on two different events (other type or body), or a boot
  event whose seq is not above every seq the gateway had seen before that power-on. Must be 0;
- `presses_stored` of `presses`: actions whose event reached the gateway. Must be all;
- `crashes`: exits other than the reboot's status 3 (`crash_examples`: the last error line of
  each). Must be 0.
Also printed: injections made, injected failures, MemoryErrors in the log (one line per failure
the firmware logged: the supervisor's, the check-in point's), reboots, frames, seconds. Exit 1
on any violation. Last line: one JSON object.
"""

import json
import os
import random
import re
import shutil
import tempfile
import time

from tools.errors import CliError

HELP = "injected MemoryErrors during sends: nothing acked lost, no seq reused, every press stored"

INJECTIONS = 100
PREFILL = 60
MARGIN_BYTES = 512
LONG_EVERY = 10
HEAP_KB = 64
ACTION_TIMEOUT_S = 30
REBOOT_SETTLE_S = 8  # after a power-on, the session is up and what was stored is resent well within this
HOLD_MS = 4000  # a person holds until the chirp: longer than the supervisor's 1 s restart of the board task
REBOOT_EXIT = 3
# One line per failure that the firmware logs: the supervisor's "supervisor: <task> MemoryError(...)"
# (its traceback's last line is not counted again) and the check-in point's own.
_MEMORY_ERROR = re.compile(r"^supervisor: \S+ MemoryError|MemoryError after storing")
_TASK_FAILED = re.compile(r"^supervisor: \S+ [A-Za-z]+Error")


class _CutOff(Exception):
    """A reboot cut the action off before it was stored (its event did not come after it)."""


class _Unit:
    """One host board of `role` on the bench scenario's broker and scripted gateway, kept running:
    a reboot (exit 3) is met with a power-on; `frames` and the log are read from here."""

    def __init__(self, role, workdir, port, prefill, heap_kb=HEAP_KB, auto_ack=True):
        from gateway.broker import ProjectBroker
        from tools import bench_firmware as bf
        from tools.simulate import ScriptedGateway

        self.role = role
        self.broker = ProjectBroker(os.path.join(workdir, "broker")).start()
        self.gw = self.hb = None
        try:
            flash, self.dev, key = bf._provision(role, workdir, {"broker_port": self.broker.port})
            self.broker.add_device(self.dev, key)
            self.gw = ScriptedGateway("127.0.0.1", self.broker.port, self.broker.gateway_credentials,
                                      auto_ack=auto_ack)
            self.gw.add_device(self.dev, key)
            self.hb = bf._bench_board(port, flash, heap_kb)
            self.prefilled = bf._prefill(port, self.hb, workdir, prefill) if prefill else []
        except BaseException:
            self.close()
            raise
        self.reboots = 0
        self.crashes = []  # exits other than the reboot's: "exit N: last error line"
        self.boot_marks = []  # per power-on: frames at the gateway just before it
        self._log_pos = 0

    def power_on(self):
        self.boot_marks.append(len(self.gw.frames))
        try:
            self.log_mark = os.path.getsize(self.hb.log_path)  # where this power-on's log starts
        except OSError:
            self.log_mark = 0
        self.hb.start()
        self.powered_at = time.monotonic()

    def check_alive(self):
        """True if the board runs; a board that exited 3 (reboot) is powered on again (False)."""
        if self.hb.alive:
            return True
        code = self.hb.proc.returncode
        tail = self.hb.log_tail(1500).strip().splitlines()
        self.hb.stop()  # closes the old client and log
        if code == REBOOT_EXIT:
            self.reboots += 1
        else:
            # a crash (not the supervisor's reboot): a real board would sit dead until its
            # hardware watchdog reset it; counted as a violation, then powered on again
            last = [ln for ln in tail if "Error" in ln][-1:] or tail[-1:]
            self.crashes.append("exit %s: %s" % (code, last[0][:200] if last else "?"))
        self.power_on()
        return False

    def log_since_last(self):
        """The board's log written since the previous call (all power-ons: one file)."""
        try:
            with open(self.hb.log_path, "rb") as f:
                f.seek(self._log_pos)
                data = f.read()
        except OSError:
            return ""
        self._log_pos += len(data)
        return data.decode(errors="replace")

    def outbox_waiting(self):
        """Events waiting by this power-on's last heap line (None before its first: the log file
        is the same for every power-on, and an earlier one's last figure is not this one's)."""
        try:
            with open(self.hb.log_path, "rb") as f:
                f.seek(self.log_mark)
                return _last_outbox(f.read().decode(errors="replace"))
        except OSError:
            return None

    def boots_stored(self):
        """Power-ons that stored their boot event: each logs "role up" once it is in the outbox
        (a power-on cut short before that, by the hog or a reboot, made none to lose)."""
        try:
            with open(self.hb.log_path, "rb") as f:
                return f.read().count(b"role up, device")
        except OSError:
            return 0

    def frames(self, name=None):
        return self.gw.of(self.dev, name)

    def close(self):
        if self.hb is not None:
            self.hb.stop()
        if self.gw is not None:
            self.gw.close()
        self.broker.stop()


def _last_outbox(log_text):
    """Events waiting in the outbox by the board's last heap line (None before the first)."""
    from tools.bench_firmware import _heap_lines

    heap = _heap_lines(log_text)
    return heap[-1].get("outbox") if heap else None


def _seq_check(unit):
    """(reused, details): seqs on two different events; boot seqs not above what came before."""
    seen = {}
    reused = []
    frames = unit.gw.of(unit.dev)
    for f in frames:
        key = (f.name, repr(f.body))
        if seen.setdefault(f.seq, key) != key:
            reused.append("seq %d: %s then %s" % (f.seq, seen[f.seq], key))
    # each power-on's boot event (the newest boot frame that came between that power-on and the
    # next: older boot events are resent while unacked): its seq above every seq seen before it
    marks = unit.boot_marks + [len(frames)]
    for k in range(1, len(unit.boot_marks)):
        before = [f.seq for f in frames[:marks[k]]]
        window = [f.seq for f in frames[marks[k]:marks[k + 1]] if f.name == "boot"]
        if before and window and max(window) <= max(before):
            reused.append("boot seq %d after seq %d was seen" % (max(window), max(before)))
    return reused


def run_role(role, injections, workdir, rng, port=None, prefill=PREFILL, margin=MARGIN_BYTES,
             long_every=LONG_EVERY, report=print, max_cycles=None):
    """The cycles on one unit of `role`; returns its figures (violations are counted, not raised:
    violations() names them)."""
    from tools.bench_firmware import Port
    from tools.hostboard import HostBoardError
    from tools.testing.procs import WaitTimeout, wait_for

    port = port or Port()
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    t0 = time.monotonic()
    unit = _Unit(role, workdir, port, prefill)
    fig = {"injections": 0, "injected_failures": 0, "memory_errors_in_log": 0, "reboots": 0, "presses": 0,
           "presses_stored": 0, "actions_repeated": 0, "actions_not_stored": 0, "other_task_failures": 0,
           "prefilled": len(unit.prefilled)}
    actions = []  # per action: ("alarm", n: the n-th press) or ("checkin", uid hex)
    prefilled = set(unit.prefilled)
    max_cycles = max_cycles or 4 * injections

    def stored(action):
        if action[0] == "checkin":
            return any(bytes(f.body[1]).hex() == action[1] for f in unit.frames("checkin"))
        return len(set(f.seq for f in unit.frames("alarm") if f.seq not in prefilled)) >= action[1]

    busy_until = [0]  # the button is held until then (a new hold before it ends would not be a new press)

    def answers():
        # running AND its control socket up: right after a power-on the process runs some time
        # before it listens (seen: three retries in a row refused within milliseconds, and the
        # tap a person would have made once the unit was up counted as not stored)
        if not unit.check_alive():
            return False
        try:
            unit.hb.ping()
            return True
        except HostBoardError:
            return False

    def act(action):
        """The action, True once made (False: the board went while we asked)."""
        try:
            try:
                wait_for(answers, 30, "the %s board to answer its control socket" % role, interval_s=0.1)
            except WaitTimeout:
                pass    # the request below names what is wrong
            if action[0] == "alarm":
                unit.hb.hold(HOLD_MS)
                busy_until[0] = time.monotonic() + HOLD_MS / 1000 + 0.3
            else:
                unit.hb.card(action[1])
            return True
        except HostBoardError as exc:
            report("%s: control request failed (%s)" % (role, str(exc).splitlines()[0][:120]))
            return False

    def wait_stored(action, timeout_s, starts0=None):
        """True once the action's event is at the gateway; False after timeout_s, or (starts0:
        power-ons so far) once a power-on since then (reboot or crash) has had REBOOT_SETTLE_S to
        resend what it had stored."""
        def done():
            if not unit.check_alive():
                return False
            if stored(action):
                return True
            if starts0 is not None and len(unit.boot_marks) > starts0 and \
                    time.monotonic() - unit.powered_at > REBOOT_SETTLE_S:
                raise _CutOff()
            return False

        try:
            return wait_for(done, timeout_s, "the %s action's event at the gateway" % role, interval_s=0.05)
        except (WaitTimeout, _CutOff):
            return False

    try:
        unit.power_on()
        cycle = 0
        hog_until = 0
        # The last injection not yet seen to fail: (reboots, crashes, MemoryError lines) when it
        # was made. Its reboot may be noticed only in the next cycle (a loaded machine: the unit
        # dies after the cycle saw its action stored), before that cycle's own injection, or in
        # a cycle whose injection could not be made: it is the earlier injection's failure.
        pending = [None]

        def attribute():
            p = pending[0]
            if p is not None and (unit.reboots > p[0] or len(unit.crashes) > p[1] or fig["memory_errors_in_log"] > p[2]):
                fig["injected_failures"] += 1
                pending[0] = None
        while fig["injected_failures"] < injections and cycle < max_cycles:
            cycle += 1
            # the previous hog is over (a request while it lasts may go unanswered), and so is the
            # previous hold of the button
            time.sleep(max(0, hog_until - time.monotonic(), busy_until[0] - time.monotonic()))
            action = ("alarm", cycle) if role == "alarm" else ("checkin", "04%06x" % cycle + "a1b2c3")
            actions.append(action)
            fig["presses"] += 1
            unit.log_since_last()
            starts0 = len(unit.boot_marks)
            hold_ms = 0
            made = act(action)
            if made:
                time.sleep(rng.uniform(0, 2.0))  # the injection's instant, at random (not a wait for a state)
                hold_ms = rng.randint(6000, 8000) if long_every and cycle % long_every == 0 else rng.randint(300, 3000)
                try:
                    attribute()     # what the previous injection did, before this one
                    pending[0] = None
                    snapshot = (unit.reboots, len(unit.crashes), fig["memory_errors_in_log"])
                    unit.hb.request("hog", leave=rng.randint(0, margin), ms=hold_ms)
                    fig["injections"] += 1
                    pending[0] = snapshot
                    # the board may take the request up to a board-task restart (1 s) late,
                    # and its deadline runs from then
                    hog_until = time.monotonic() + hold_ms / 1000 + 1.5
                except HostBoardError as exc:
                    report("%s cycle %d: no injection (%s)" % (role, cycle, str(exc).splitlines()[0][:120]))
                    hold_ms = 0
            ok = made and wait_stored(action, hold_ms / 1000 + ACTION_TIMEOUT_S, starts0)
            if not ok and (len(unit.boot_marks) > starts0 or not made):
                # a reboot cut the action off before it was stored: made again, as a person would
                fig["actions_repeated"] += 1
                time.sleep(max(0, busy_until[0] - time.monotonic()))
                # A tap or press the board was gone for (it exited while we asked) was never made:
                # made again once it is up, as a person would (seen: the board's delayed reboot
                # reset the control socket twice in a row, and the cycle counted a lost press).
                for _ in range(3):
                    made = act(action)
                    if made:
                        break
                ok = made and wait_stored(action, ACTION_TIMEOUT_S)
            if not ok:
                fig["actions_not_stored"] += 1
            lines = unit.log_since_last().splitlines()
            errors = sum(1 for ln in lines if _MEMORY_ERROR.search(ln))
            fig["memory_errors_in_log"] += errors
            fig["other_task_failures"] += sum(1 for ln in lines if _TASK_FAILED.search(ln)
                                              and not _MEMORY_ERROR.search(ln))
            attribute()
            report("%s cycle %d: hog %d ms, %d MemoryErrors logged, reboots %d, crashes %d, %s" % (
                role, cycle, hold_ms, errors, unit.reboots, len(unit.crashes), "stored" if ok else "NOT STORED"))
        # the end: nothing held, the outbox drains
        time.sleep(max(0, hog_until - time.monotonic()))
        unit.check_alive()
        attribute()
        try:
            unit.hb.request("hog", bytes=0)
        except HostBoardError:
            pass
        try:
            wait_for(lambda: unit.check_alive() and unit.outbox_waiting() == 0, 60,
                     "the %s board's outbox to drain" % role)
            drained = True
        except WaitTimeout:
            drained = False
        unit.log_since_last()
        frames = unit.frames()
        got = set(f.seq for f in frames)
        lost = [s for s in unit.prefilled if s not in got]
        boots = len(set(f.seq for f in unit.frames("boot")))
        lost_boots = max(0, unit.boots_stored() - boots)
        fig["presses_stored"] = sum(1 for a in actions if stored(a))
        fig.update(reboots=unit.reboots, crashes=len(unit.crashes), crash_examples=unit.crashes[:5],
                   power_ons=len(unit.boot_marks), boots_stored=unit.boots_stored(), boot_events=boots,
                   acked_events_lost=len(lost) + lost_boots,
                   lost_seqs=lost[:20], seq_reused=0, outbox_drained=drained, frames=len(frames),
                   distinct_seqs=len(got), cycles=cycle, seconds=round(time.monotonic() - t0, 1))
        reused = _seq_check(unit)
        fig["seq_reused"] = len(reused)
        if reused:
            fig["seq_reused_examples"] = reused[:5]
        return fig
    finally:
        unit.close()


def violations(fig):
    out = []
    if fig["acked_events_lost"]:
        out.append("%d acked events lost" % fig["acked_events_lost"])
    if fig["seq_reused"]:
        out.append("%d seqs reused" % fig["seq_reused"])
    if fig["presses_stored"] < fig["presses"]:
        out.append("%d of %d presses stored" % (fig["presses_stored"], fig["presses"]))
    if fig["crashes"]:
        out.append("%d crashes (exit other than the reboot's 3: %s)" % (fig["crashes"], fig["crash_examples"][0]))
    if not fig["outbox_drained"]:
        out.append("outbox did not drain")
    return out


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--role", choices=("alarm", "checkin", "both"), default="both")
    parser.add_argument("--injections", type=int, default=INJECTIONS, metavar="N",
                        help="injected failures per role (default %d)" % INJECTIONS)
    parser.add_argument("--prefill", type=int, default=PREFILL, metavar="N",
                        help="events queued before the board starts (default %d)" % PREFILL)
    parser.add_argument("--margin", type=int, default=MARGIN_BYTES, metavar="BYTES",
                        help="the hog leaves a random 0..BYTES of the heap free (default %d)" % MARGIN_BYTES)
    parser.add_argument("--long-every", type=int, default=LONG_EVERY, metavar="K",
                        help="every K-th injection holds the heap 6..8 s (a reboot, likely); 0: never "
                        "(default %d)" % LONG_EVERY)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")


def run(args):
    from tools.bench_firmware import Port, ScenarioFailed
    from tools.hostboard import HostBoardError
    from tools.testing.procs import WaitTimeout

    roles = ("alarm", "checkin") if args.role == "both" else (args.role,)
    report = (lambda msg: None) if args.json else print
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    port = Port()
    result = {"seed": seed, "heap_kb": HEAP_KB, "port": port.describe(), "injections_goal": args.injections}
    workdir = tempfile.mkdtemp(prefix="fq-bench-memfault-")
    try:
        for role in roles:
            fig = run_role(role, args.injections, os.path.join(workdir, role), rng, port, args.prefill, args.margin,
                           args.long_every, report)
            result[role] = fig
            report("%s: %d injections, %d injected failures, %d MemoryError lines in the log, %d reboots; "
                   "acked events lost %d, seqs reused %d, presses stored %d of %d (%d made again after a reboot)"
                   % (role, fig["injections"], fig["injected_failures"], fig["memory_errors_in_log"],
                      fig["reboots"], fig["acked_events_lost"], fig["seq_reused"], fig["presses_stored"],
                      fig["presses"], fig["actions_repeated"]))
    except (ScenarioFailed, HostBoardError, WaitTimeout) as exc:  # set-up, or a board that would not start
        result["error"] = str(exc)[:2000]
        print(json.dumps(result))
        raise CliError("memfault: %s" % str(exc).splitlines()[0]) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    bad = {role: violations(result[role]) for role in roles if violations(result[role])}
    result["violations"] = bad
    print(json.dumps(result))
    if bad:
        raise CliError("memfault: %s" % "; ".join("%s: %s" % (r, ", ".join(v)) for r, v in bad.items()))
    return 0
