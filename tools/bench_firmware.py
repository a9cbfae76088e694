"""`fengqiao bench firmware`: heap used per role through 200 queued events and a reconnect.

For each role (alarm, checkin) and each heap size tried (smallest first, until one passes):

1. provision a host board; fill its outbox with 200 events through the firmware's own code
   (app.uplink.Uplink.emit on the MicroPython VM: alarms/tamper/heartbeats or check-ins);
2. start the project's Mosquitto and a scripted gateway that acks every frame; boot the board
   with `-X heapsize=N` and `--heap-log` (it collects once a second and logs live heap);
3. wait until all 200 + the boot event are acked; restart the broker (a reconnect); do the role's
   action once more (hold the button / present a card) and wait for that frame and its ack;
4. the run passes if all of that happened with no MemoryError and the board still alive.

Figures per role: `heap_kb` (smallest heap of those tried that passed; `failed_kb` lists the
smaller ones that did not), `live_after_boot` (bytes in use after start-up), `code_bytes` (heap
taken by importing the role's modules alone: module, function and class objects, constants and
qstr pool entries; the bytecode itself stays in ROMFS, as on a board with a ROMFS partition or
frozen modules), `qstrs` (names in the heap's qstr pool after those imports: the pool grows by
doubling, and above 620 names it takes another 7.1 KB block), `live_peak` (highest live heap
after a collection: the GC high-water mark), `data_peak` (live_peak - code_bytes: what the run
itself needs on top of its code), `alloc_peak` (highest gc.mem_alloc() sampled, garbage
included). All on the 64-bit Unix port, where a GC block is 32 bytes and a pointer 8 (16 and 4
on the 32-bit ESP32 and RP2040).
Last line: one JSON object.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

from tools.errors import CliError

HELP = "heap used and GC high-water mark per role (200 queued events + a reconnect)"

HEAPS_KB = (48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 256)
EVENTS = 200

PREFILL = r'''
import sys
import asyncio
import identity
from app.uplink import Uplink
from clock import Clock
from outbox import PRIO_ALARM, PRIO_HEARTBEAT, PRIO_NORMAL
from protocol import frame

root, n = sys.argv[1], int(sys.argv[2])
cfg = identity.load(root)
up = Uplink(cfg, root + "/data", Clock(), print)
for i in range(n):
    if cfg["role"] == "checkin":
        up.emit(frame.UP_CHECKIN, [cfg["checkpoint_id"] or 1, bytes([4, i & 255, i >> 8, 9, 1, 2, 3])], PRIO_NORMAL)
    elif i % 10 == 0:
        up.emit(frame.UP_ALARM, [i % 4], PRIO_ALARM)
    elif i % 3 == 0:
        up.emit(frame.UP_TAMPER, [i % 2 == 0], PRIO_NORMAL)
    else:
        up.emit(frame.UP_HEARTBEAT, [3900, i, i, None, 10000], PRIO_HEARTBEAT)
print("queued", len(up.outbox))
'''


class ScenarioFailed(RuntimeError):
    pass


def _heap_lines(log_text):
    out = []
    for line in log_text.splitlines():
        if line.startswith("heap: "):
            parts = line.split()
            out.append(dict(zip(parts[1::2], [int(x) for x in parts[2::2]])))
    return out


def run_scenario(role, heap_kb, workdir, events=EVENTS, timeout_s=90, tls=False):
    """One run; returns figures dict or raises ScenarioFailed. tls: the board talks MQTT over TLS
    (verifying the broker's certificate against the provisioned CA) instead of plain TCP."""
    import subprocess

    from gateway.broker import ProjectBroker
    from tools.hostboard import HostBoard, HostBoardError, provision_dir
    from tools.simulate import ScriptedGateway
    from tools.testing.micropython import micropython_binary
    from tools.testing.procs import WaitTimeout, wait_for

    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    broker = ProjectBroker(os.path.join(workdir, "broker")).start()
    dev = 0x7000 + (1 if role == "alarm" else 2)
    key = os.urandom(32)
    flash = os.path.join(workdir, "flash")
    link_cfg = {"broker_port": broker.port}
    if tls:
        with open(broker.ca_path) as f:
            link_cfg = {"broker_port": broker.tls_port, "tls": True, "ca_pem": f.read()}
    provision_dir(flash, dict(link_cfg, device_id=dev, key=key, role=role, broker_host="127.0.0.1", checkpoint_id=3,
                              settings={"heartbeat_interval_s": 3600}))
    broker.add_device(dev, key)
    try:
        gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    except RuntimeError as exc:
        broker.stop()
        raise ScenarioFailed("set-up: %s" % exc)
    gw.add_device(dev, key)
    hb = HostBoard(flash, heap="%dk" % heap_kb, args=["--heap-log", "--backoff-min-ms", "200",
                                                      "--backoff-max-ms", "1000"])
    try:
        script = os.path.join(workdir, "prefill.py")
        with open(script, "w") as f:
            f.write(PREFILL)
        env = dict(os.environ, MICROPYPATH=hb.image + ":.frozen")
        p = subprocess.run([micropython_binary(), "-X", "heapsize=1m", script, flash, str(events)],
                           capture_output=True, text=True, env=env, timeout=60, cwd=hb.image)
        if "queued %d" % events not in p.stdout:
            raise ScenarioFailed("prefill failed: %s %s" % (p.stdout[-500:], p.stderr[-1500:]))
        t0 = time.monotonic()

        def frames_from_live_board(count):
            if not hb.alive:
                raise ScenarioFailed("board died: %s" % hb.log_tail(300).strip().splitlines()[-1:])
            if "MemoryError" in hb.log_tail(1 << 20):
                raise ScenarioFailed("MemoryError in a task (restarted by the supervisor, but the heap is too small)")
            return len(gw.frames) >= count

        try:
            hb.start()
            wait_for(lambda: frames_from_live_board(events + 1), timeout_s, "%d frames from the board" % (events + 1))
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
        boot_line = [ln for ln in log.splitlines() if ln.startswith("main: ") and "role up" in ln]
        after_boot = int(boot_line[-1].split("heap ")[1].split()[0]) if boot_line else None
        code, qstrs = code_figures(hb.image, role)
        return {"heap_kb": heap_kb, "live_after_boot": after_boot, "code_bytes": code, "qstrs": qstrs,
                "live_peak": max(h["live_peak"] for h in heap),
                "alloc_peak": max(h["alloc_peak"] for h in heap),
                "frames": len(gw.frames), "seconds": round(time.monotonic() - t0, 1)}
    finally:
        hb.stop()
        gw.close()
        broker.stop()


CODE = r'''
import gc
import sys
gc.collect()
base = gc.mem_alloc()
# What a running board keeps imported (identity and the console's request handling are loaded
# per use and dropped again: app/runtime.py, console/__init__.py).
import asyncio, console, clock, supervisor, link, heartbeat, app.uplink, app.runtime
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


def code_bytes(image, role):
    """Heap taken by the role's modules once imported (module-level objects and their share of
    the qstr pool; the bytecode stays in ROMFS when the board runs from it)."""
    return code_figures(image, role)[0]


def code_figures(image, role):
    """(code bytes, qstrs in the heap's pool) once the role's modules are imported."""
    import subprocess

    from tools.hostboard import image_run_argv

    fd, path = tempfile.mkstemp(suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(CODE)
    try:
        # the same way the board runs its code (from ROMFS when available), so that code_bytes and
        # the board's own live figures are comparable
        argv, env, cwd = image_run_argv(path, [role], heap="1m", image=image)
        p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=30)
    finally:
        os.unlink(path)
    code = qstrs = None
    for line in p.stdout.splitlines():
        if line.startswith("code "):
            code = int(line.split()[1])
        elif "n_qstr=" in line:
            qstrs = int(line.split("n_qstr=")[1].split(",")[0])
    return code, qstrs


def measure(role, workdir, heaps_kb=HEAPS_KB, events=EVENTS, report=print, tls=False):
    tried = []
    for kb in heaps_kb:
        try:
            figures = run_scenario(role, kb, os.path.join(workdir, "%s-%d" % (role, kb)), events, tls=tls)
        except ScenarioFailed as exc:
            tried.append(kb)
            report("%s: %d KB heap: failed (%s)" % (role, kb, str(exc).splitlines()[0][:160]))
            continue
        figures["failed_kb"] = tried
        if figures["code_bytes"]:
            figures["data_peak"] = figures["live_peak"] - figures["code_bytes"]
        report("%s: %d KB heap: passed; code %s B, live after boot %s B, live peak %d B (data %s B), alloc peak %d B"
               % (role, kb, figures["code_bytes"], figures["live_after_boot"], figures["live_peak"],
                  figures.get("data_peak"), figures["alloc_peak"]))
        return figures
    return {"heap_kb": None, "failed_kb": tried}


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


def run(args):
    roles = ("alarm", "checkin") if args.role == "both" else (args.role,)
    heaps = tuple(sorted(set(args.heap_kb))) if args.heap_kb else HEAPS_KB
    workdir = tempfile.mkdtemp(prefix="fq-bench-fw-")
    report = (lambda msg: None) if args.json else print
    result = {"events": args.events, "goal_kb": 64, "stretch_goal_kb": 48, "transport": "tls" if args.tls else "tcp",
              "port": "unix-64bit, code %s" % ("in ROMFS (executed in place)" if _romfs() else "as .mpy files (bytecode in the heap)")}
    try:
        for role in roles:
            result[role] = measure(role, workdir, heaps, args.events, report, tls=args.tls)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    if any(result[r]["heap_kb"] is None for r in roles):
        raise CliError("no heap size tried was enough for every role")
    return 0


def _romfs():
    from tools.hostboard import romfs_available

    return romfs_available()
