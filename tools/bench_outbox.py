"""`fengqiao bench outbox`: kill -9 the outbox at random points, check nothing stored is lost.

One MicroPython process (the real outbox.py and seqcounter.py, on the Unix port) stores events
(alarms, check-ins, heartbeats) and acknowledges random ones, printing what it is about to do and
what it has done. This driver SIGKILLs it at a random moment, starts it again on the same flash
directory, and checks what the restarted process finds:

- every event whose put() returned and whose removal had not begun is there, with its exact data
  and priority (nothing stored is lost, nothing is misread);
- every event whose removal returned is gone;
- sequence numbers after the restart are above every number handed out before (never reused).

The last line of output is one JSON object: cycles, violations, events stored, acks, compactions
seen, seconds. `make test` runs the same driver with at least 50 cycles (firmware/tests).
"""

import json
import os
import random
import signal
import subprocess
import tempfile
import time

from tools.errors import CliError
from tools.testing.micropython import micropython_argv, micropython_env

HELP = "kill -9 the flash outbox at random points; nothing stored is lost, no seq reused"

# The MicroPython side. Capacity is kept away from full (acks when near it) so every missing
# event is a bug, not an eviction; eviction itself is covered by the outbox unit suite.
WORKER = r'''
import sys
import random
from outbox import Outbox
from seqcounter import SeqCounter

d = sys.argv[1]
random.seed(int(sys.argv[2]))
MAX = 40


def expected(s):
    return (s % 3, b"%d:" % s + bytes([(s * 7 + i) & 255 for i in range(s % 37)]))


ob = Outbox(d, max_entries=64, max_bytes=4096, compact_bytes=384)
sc = SeqCounter(d, 1, block=16)
w = sys.stdout.write
w("S %s\n" % " ".join(str(s) for s in ob.seqs()))
for s in ob.seqs():
    got = ob.read(s)
    if got != expected(s):
        w("X %d\n" % s)
w("C %d\n" % ob.compactions)
w("N %d\n" % sc.peek())
w("R\n")
while True:
    n = len(ob)
    if n < MAX and (n < 4 or random.random() < 0.6):
        s = sc.next()
        prio, data = expected(s)
        w("W %d\n" % s)
        ob.put(s, prio, data)
        w("P %d\n" % s)
    else:
        seqs = ob.seqs()
        s = seqs[0] if random.random() < 0.7 else random.choice(seqs)
        w("a %d\n" % s)
        ob.remove(s)
        w("A %d\n" % s)
'''


class CrashCheckFailed(AssertionError):
    """The outbox lost, kept or misread an event, or a sequence number was reused."""


def run_cycles(cycles, workdir=None, seed=None, max_kill_ms=25, heap="64k", timeout_s=20):
    """Run `cycles` kill -9 cycles; returns a stats dict; raises CrashCheckFailed on a violation."""
    rng = random.Random(seed)
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="fq-outbox-crash-")
        workdir = own_tmp.name
    flash = os.path.join(workdir, "flash")
    os.makedirs(flash, exist_ok=True)
    script = os.path.join(workdir, "outbox_crash_worker.py")
    with open(script, "w") as f:
        f.write(WORKER)
    env = micropython_env()
    stored = set()  # put() returned, removal not begun
    removing = set()  # removal begun, not returned
    removed = set()  # removal returned
    maybe = set()  # put() begun, not returned
    max_seq = 0
    stats = {"cycles": 0, "violations": 0, "stored": 0, "acked": 0, "compactions": 0,
             "events_waiting_max": 0, "kill_ms_max": max_kill_ms}
    problems = []
    t0 = time.monotonic()
    try:
        for cycle in range(cycles + 1):
            proc = subprocess.Popen(micropython_argv(script, heap, [flash, str(rng.randrange(1 << 30))]),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            line = proc.stdout.readline()
            state = []
            while line and not line.startswith(b"R"):
                state.append(line.decode().split())
                line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read().decode(errors="replace")
                raise CrashCheckFailed("worker died before ready (cycle %d): %s" % (cycle, err[-2000:]))
            # Check what the restarted process found against what the killed one reported.
            present = set()
            for parts in state:
                if parts[0] == "S":
                    present = set(int(x) for x in parts[1:])
                elif parts[0] == "X":
                    problems.append("cycle %d: seq %s misread" % (cycle, parts[1]))
                elif parts[0] == "C":
                    stats["compactions"] += int(parts[1])
                elif parts[0] == "N" and int(parts[1]) <= max_seq:
                    problems.append("cycle %d: next seq %s <= %d already used" % (cycle, parts[1], max_seq))
            for s in stored - present:
                problems.append("cycle %d: stored seq %d lost" % (cycle, s))
            for s in removed & present:
                problems.append("cycle %d: removed seq %d back" % (cycle, s))
            for s in present - stored - removing - maybe:
                problems.append("cycle %d: unknown seq %d present" % (cycle, s))
            stats["events_waiting_max"] = max(stats["events_waiting_max"], len(present))
            stored, removing, maybe = present, set(), set()
            removed = set()
            if cycle == cycles:
                proc.kill()
                proc.wait()
                proc.stdout.close()
                proc.stderr.close()
                break
            time.sleep(rng.uniform(0, max_kill_ms) / 1000.0)
            os.kill(proc.pid, signal.SIGKILL)
            out = proc.stdout.read()  # the buffered reader: readline() may hold lines already
            proc.wait(timeout_s)
            proc.stdout.close()
            proc.stderr.close()
            for raw in out.split(b"\n"):
                parts = raw.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    continue  # the line the kill cut short
                op, s = parts[0], int(parts[1])
                if op == b"W":
                    if s <= max_seq:
                        problems.append("cycle %d: seq %d reused" % (cycle, s))
                    max_seq = max(max_seq, s)
                    maybe.add(s)
                elif op == b"P":
                    maybe.discard(s)
                    stored.add(s)
                    stats["stored"] += 1
                elif op == b"a":
                    stored.discard(s)
                    removing.add(s)
                elif op == b"A":
                    removing.discard(s)
                    removed.add(s)
                    stats["acked"] += 1
            stats["cycles"] += 1
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    stats["violations"] = len(problems)
    stats["seconds"] = round(time.monotonic() - t0, 2)
    if problems:
        raise CrashCheckFailed("%d violations in %d cycles:\n%s" % (len(problems), cycles, "\n".join(problems[:20])))
    return stats


def add_arguments(parser):
    parser.add_argument("--cycles", type=int, default=200, help="kill -9 cycles (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--max-kill-ms", type=int, default=25, help="kill within this many ms of ready")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")


def run(args):
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    try:
        stats = run_cycles(args.cycles, seed=seed, max_kill_ms=args.max_kill_ms)
    except CrashCheckFailed as exc:
        raise CliError("outbox crash check FAILED (seed %d): %s" % (seed, exc)) from exc
    stats["seed"] = seed
    if not args.json:
        print("kill -9 cycles: %d, events stored: %d, acked: %d, compactions at boot: %d, violations: 0"
              % (stats["cycles"], stats["stored"], stats["acked"], stats["compactions"]))
    print(json.dumps(stats))
    return 0
