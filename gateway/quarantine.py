"""Flood quarantine: a device that floods the broker is cut off there, like a revoked one (issue 13).

    # a gateway plugin (gateway.config DEFAULT_PLUGINS, or [gateway] plugins = [..., "gateway.quarantine"])
    [quarantine]
    flood_msgs_per_s = 400      # more messages than this from one device within one second: a flood
    cooldown_s = 300.0          # first quarantine; doubled for each repeat within a day (cap max_cooldown_s)
    max_cooldown_s = 86400.0
    check_interval_s = 1.0      # how often releases are due / made by an operator are picked up

What a real device can send at once: its whole outbox (256 records) after an outage, a few frames
a minute otherwise. So 400 messages in one second is never a device doing its job; a flooding
device (tens of thousands of QoS 0 messages a second on loopback) crosses it in milliseconds. Not
higher: the limit is judged on what reaches the gateway, and with ten flooders the broker drops
most of each one's messages (bounded queues), so each arrives at ~1/10 of the gateway's read rate
(measured when each message went through paho first: 1,000/s was not reached by 9 of 10
flooders, and on a busier machine 400/s neither: 9 of 10 unnamed after 8 s, 2026-12-07). So the
messages are counted as they are read, in the read buffer at ~1 us each (gateway.service
_ReadAhead, which also cuts out QoS 0 uplinks: SPEC section 6 has none); measured then, ten
flooders each reached the gateway at 5,000-9,000 msg/s and all were named within 0.21 s.
After the gateway (re)connects, the broker hands over the backlog it kept for us at full speed:
no device is judged then until it has sent more than the broker could have queued for us
(max_inflight_messages + max_queued_messages), which only a flooder does.

Ten flooders at once (issue 13, measured with `fengqiao bench flood` on the 2-core machine):
- the gateway sees a flood late: between the broker and the gateway sit Mosquitto's queue for us
  (max_queued_messages) and, on loopback, up to 4 MB in the broker's socket send buffer (~60,000
  flood messages; Mosquitto has no option to bound it), read in arrival order. So a flooder is
  named when its messages come out of that pipe, and an alarm sent meanwhile waits behind them
  (measured while each went through paho: one or two alarms of ~1-4 s at the start of a
  ten-device flood, none after; with QoS 0 ones cut out of the read buffer the pipe drains at
  ~1 us a message);
- each cut-off is a broker reload, and a reload stalls the whole broker while it re-checks the
  password of every connected login (with the gateway's at 210,000 PBKDF2 iterations: 0.3-0.6 s
  per reload under the flood; now 10,000, and 0.57 ms per connected device at 1,000: see
  gateway/broker.py DEVICE_HASH_ITERATIONS, ~1.3 s per reload with 2,000 devices). So requests are gathered into one reload
  (`_gather`), the reload waits until the broker has finished (a SIGHUP sent during one is lost),
  and what is named meanwhile goes into the next one.

Measured with `fengqiao bench flood` (60 s floods, QoS 0, 2026-12-08 00:06-00:09, load average
3.9, the shared 2-core machine): one flooder cut off at 0.06 s, refused at 0.35 s; ten cut off at
0.06-0.30 s, refused at 0.73 s; the victim's alarm acks during the floods p50 37 ms, p99 62 / 53 ms
(max 128 / 74 ms), its neighbours' sirens p99 114 / 119 ms; broker peak RSS 9.6 MB.
Not as good: a flood at QoS 1 (`bench flood --qos 1`): each message needs a PUBACK, so it goes
through paho (~14 us) and is not cut out of the read buffer; the ten-device case was named after
0.7-3.5 s (load 4, each seen at 500-12,000 msg/s), with acks p99 425 ms and sirens up to 1.3 s
meanwhile. The broker bounds it too (max_inflight_messages: it waits for our PUBACKs).

Failure modes and answers:
- a flood delays everyone's alarms: the service counts each device's messages as they are read
  and drops the flooder's from the first read over the limit (before paho and any queue;
  "Quarantined" in fengqiao_rejections_total; QoS 0 ones before that too, "WrongQoS"), and
  this module's thread cuts it off at the broker within ~0.2 s (`ProjectBroker.hold_devices`: the
  login leaves the password file, SIGHUP drops its connection and refuses it back);
- nobody notices: `device_quarantined` (a gateway event: stored, forwarded, on the duty console
  with the other `device_` faults) with the rate and until when; `device_released` when it ends
  (by "cooldown" or "operator");
- a quarantine outlives the gateway: it is kept in the broker's held.json, restored at start, and
  released when due even if that was while the gateway was stopped;
- an operator must let a device back early: `fengqiao device release ID` (gateway/quarantine_cli.py)
  edits held.json and reloads the broker; this module notices within check_interval_s;
- a repeat offender: the cool-down doubles for each quarantine within 24 h of the previous one.

What a quarantined device had in its outbox is not lost: nothing of it was acknowledged, so it is
resent once the device is let back.
"""

import logging
import select
import socket
import struct
import threading
import time

log = logging.getLogger("fengqiao.quarantine")

DEFAULTS = {"flood_msgs_per_s": 400, "cooldown_s": 300.0, "max_cooldown_s": 86400.0, "check_interval_s": 1.0}
REPEAT_WINDOW_S = 86400.0
KINDS = ("device_quarantined", "device_released")
RELOAD_QUIET_S = 0.25
RELOAD_WAIT_S = 1.0


def _connect_packet(username, password, keepalive_s=60):
    """MQTT 3.1.1 CONNECT, clean session, empty client id (the broker uses the username)."""
    def field(b):
        return struct.pack("!H", len(b)) + b
    body = field(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", keepalive_s) + field(b"") \
        + field(username.encode()) + field(password.encode())
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([0x10]) + bytes(length) + body


def take_over(port, credentials, timeout_s=2.0):
    """Drop the connections of these logins at once: connect as each of them (the client id is the
    username, so the broker closes the old connection first; no reload, no password re-check of
    anyone else). {device_id: (username, password)} -> ({device_id: open socket}, {device_id:
    monotonic time of its CONNACK}). Close the sockets once the reload refuses the logins."""
    socks, done = {}, {}
    for device_id, (user, password) in credentials.items():
        try:
            sk = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
            sk.sendall(_connect_packet(user, password))
            sk.setblocking(False)
            socks[device_id] = sk
        except OSError as exc:
            log.warning("quarantine: could not take over a connection", extra={"fields": {
                "device": "%08x" % device_id, "error": str(exc)}})
    deadline = time.monotonic() + timeout_s
    waiting = dict(socks)
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(list(waiting.values()), [], [], max(0.0, deadline - time.monotonic()))
        for sk in ready:
            device_id = next(d for d, s_ in waiting.items() if s_ is sk)
            del waiting[device_id]
            try:
                if sk.recv(4)[:1] == b"\x20":   # CONNACK: the old connection is closed by now
                    done[device_id] = time.monotonic()
            except OSError:
                pass
    return socks, done


class QuarantineConfigError(ValueError):
    """A bad [quarantine] key."""


class FloodDetector:
    """Counts every uplink message per topic in one-second windows (the service's MQTT thread)."""

    def __init__(self, msgs_per_s=400, backlog_allowance=11000, window_s=1.0):
        self.limit = int(msgs_per_s * window_s)
        self.window_s = window_s
        self.backlog_allowance = backlog_allowance
        self._allowance = backlog_allowance
        self._state = {}    # topic -> [window start, count in window, count since connect]

    def connected(self, session_present=True):
        """A new connection: with a session, the broker may now hand over its backlog for us;
        without one it has none, and a device is judged on its rate alone."""
        self._allowance = self.backlog_allowance if session_present else 0
        for st in self._state.values():
            st[2] = 0

    def note(self, topic, now, in_grace, n=1):
        """None, or the rate (msgs/s) of a device found flooding by these n messages (the ones of
        one read of the gateway's socket, gateway.service._ReadAhead)."""
        st = self._state.get(topic)
        if st is None:
            st = self._state[topic] = [now, 0, 0]
        elif now - st[0] >= self.window_s:
            st[0] = now
            st[1] = 0
        st[1] += n
        st[2] += n
        if st[1] > self.limit and (not in_grace or st[2] > self._allowance):
            # one 64 KiB read holds up to ~900 messages of a topic at the same `now`: no rate is
            # taken over less than 50 ms
            return round(st[1] / max(now - st[0], 0.05))
        return None

    def forget(self, topic):
        self._state.pop(topic, None)


def _settings(section):
    unknown = set(section) - set(DEFAULTS)
    if unknown:
        raise QuarantineConfigError("unknown key(s) in [quarantine]: %s" % ", ".join(sorted(unknown)))
    values = dict(DEFAULTS, **section)
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise QuarantineConfigError("[quarantine] %s must be a positive number, not %r" % (k, v))
    return values


class Quarantine:
    """Holds flooders at the broker, raises the duty-side events, releases them when due."""

    def __init__(self, broker, service, ctx, cooldown_s=300.0, max_cooldown_s=86400.0, limit_per_s=None,
                 wall=time.time, gather_s=0.02):
        self.broker = broker
        self.limit_per_s = limit_per_s
        self.service = service
        self.ctx = ctx
        self.cooldown_s = float(cooldown_s)
        self.max_cooldown_s = float(max_cooldown_s)
        self.wall = wall
        self.gather_s = gather_s
        self._requests = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._last = {}         # device_id -> (offences, wall time of the last quarantine)
        # What this thread has seen held at the broker (held.json). Only these can be "released by
        # an operator" when they leave held.json: a device the MQTT thread has just held (its
        # request not yet written) is in service.held() but not in held.json, and is not released.
        self._at_broker = set()
        self.quarantined_at = {}  # device_id -> monotonic time the broker cut it off (bench)
        self.detected_at = {}     # device_id -> monotonic time the flood guard named it (bench)
        self.refused_at = {}      # device_id -> monotonic time the reload refusing its login ended
        self._reloads = []        # [(device ids, their takeover sockets)] waiting for the reload
        self._reload_wake = threading.Event()
        self._reloader = None

    # -- the service's MQTT thread --------------------------------------------------------------

    def on_flood(self, device_id, rate):
        with self._lock:
            self._requests.append((device_id, rate, time.monotonic()))
        self._wake.set()

    # -- our thread -----------------------------------------------------------------------------

    def start(self, check_interval_s=1.0):
        for ev in self.ctx.store.gateway_events(("device_quarantined",)):
            if ev.device_id is not None and isinstance(ev.body, dict):
                self._last[ev.device_id] = (int(ev.body.get("offence", 1)), float(ev.body.get("at", 0)))
        for device_id in self.broker.held():
            self.service.hold(device_id)
            self._at_broker.add(device_id)
        self.check_interval_s = check_interval_s
        self._thread = threading.Thread(target=self._loop, name="fengqiao-quarantine", daemon=True)
        self._reloader = threading.Thread(target=self._reload_loop, name="fengqiao-quarantine-reload", daemon=True)
        self._thread.start()
        self._reloader.start()
        return self

    def stop(self):
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(10)
        self._reload_wake.set()
        if self._reloader:
            self._reloader.join(40)

    def _request_reload(self, device_ids=(), socks=()):
        with self._lock:
            self._reloads.append((list(device_ids), list(socks)))
        self._reload_wake.set()

    def _reload_loop(self):
        """The only caller of broker.reload() here: one reload for whatever was written while the
        previous one ran (a SIGHUP sent during a reload is lost), never in front of a cut-off."""
        while True:
            self._reload_wake.wait(1.0)
            self._reload_wake.clear()
            # Their connections are already dropped (take_over); the reload, which freezes the
            # broker (and the next take-overs) for 0.3-0.8 s under a flood, waits until the
            # requests stop for RELOAD_QUIET_S, at most RELOAD_WAIT_S.
            first, n = time.monotonic(), -1
            while not self._stop.is_set() and time.monotonic() - first < RELOAD_WAIT_S:
                with self._lock:
                    if len(self._reloads) == n:
                        break
                    n = len(self._reloads)
                self._stop.wait(RELOAD_QUIET_S)
            with self._lock:
                batch, self._reloads = self._reloads, []
            if not batch:
                if self._stop.is_set():
                    return
                continue
            try:
                self.broker.reload()
            except Exception:   # BrokerError (not confirmed) or an OS error: counted, next one retries
                self.ctx.metrics.inc("fengqiao_handler_errors_total", {"handler": "quarantine_reload"})
                log.exception("quarantine: broker reload failed")
            done = time.monotonic()
            for device_ids, socks in batch:
                for device_id in device_ids:
                    self.refused_at[device_id] = done
                    self.quarantined_at.setdefault(device_id, done)
                for sk in socks:
                    sk.close()

    def _loop(self):
        next_check = 0.0
        while not self._stop.is_set():
            if self._wake.wait(max(0.0, next_check - time.monotonic())):
                self._gather()
            self._wake.clear()
            try:
                self._hold_requested()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.check_interval_s
                    self.check()
            except Exception:   # never let the thread die: the next round retries
                self.ctx.metrics.inc("fengqiao_handler_errors_total", {"handler": "quarantine"})
                log.exception("quarantine round failed")

    def _gather(self):
        """Ten flooders are named within tens of milliseconds of each other: wait while more
        requests keep coming (gather_s each, at most 5 x gather_s), so that one reload cuts them
        all off. Each reload stalls the whole broker while it re-checks every connected login's
        password (measured 0.3-0.6 s each under a ten-device flood on the 2-core machine)."""
        deadline = time.monotonic() + 5 * self.gather_s
        n = -1
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if len(self._requests) == n:
                    return
                n = len(self._requests)
            time.sleep(self.gather_s)

    def _take_over(self, infos):
        port = getattr(self.broker, "port", None)
        if not port:        # no plain listener on 127.0.0.1: the reload alone cuts them off
            return {}, {}
        creds = {}
        for device_id in infos:
            dev = self.ctx.registry.device(device_id)
            if dev is None or dev.status != "active" or device_id in self._at_broker:
                continue
            try:
                creds[device_id] = self.broker.device_credentials(device_id, self.ctx.registry.device_key(device_id, dev.key_id))
            except Exception:   # a key the registry cannot give: the reload alone cuts it off
                log.exception("quarantine: no key to take over %08x" % device_id)
        return take_over(port, creds) if creds else ({}, {})

    def _cooldown(self, device_id, now):
        offences, last = self._last.get(device_id, (0, 0.0))
        offence = offences + 1 if now - last < REPEAT_WINDOW_S else 1
        return offence, min(self.cooldown_s * 2 ** (offence - 1), self.max_cooldown_s)

    def _hold_requested(self):
        with self._lock:
            requests, self._requests = self._requests, []
        if not requests:
            return
        now = self.wall()
        infos, rates = {}, {}
        for device_id, rate, _ in requests:
            offence, cooldown = self._cooldown(device_id, now)
            infos[device_id] = {"reason": "flood", "msgs_per_s": rate, "at": now, "until": now + cooldown,
                                "offence": offence}
            rates[device_id] = rate
        # Their connections are dropped now, by taking them over (ms); the reload, which stalls the
        # broker for everyone, then refuses them back (one for all: 0.3-0.6 s under a flood).
        socks, dropped = self._take_over(infos)
        try:
            self.broker.hold_devices(infos, reload=False)   # one file write for all of them ...
        finally:
            self._request_reload(infos, socks.values())     # ... and one reload (its own thread)
        cut = time.monotonic()
        self._at_broker.update(set(self.broker.held()) & set(infos))   # not a revoked one (skipped)
        for device_id, rate, seen in requests:
            if device_id not in infos:
                continue
            info = infos.pop(device_id)
            if device_id in dropped:
                self.quarantined_at[device_id] = dropped[device_id]
            self.detected_at[device_id] = seen
            self._last[device_id] = (info["offence"], now)
            self.ctx.metrics.inc("fengqiao_quarantines_total")
            self.ctx.metrics.observe("fengqiao_quarantine_seconds", dropped.get(device_id, cut) - seen)
            body = {"reason": "flood", "msgs_per_s": rate, "limit_per_s": self.limit_per_s, "at": round(now, 3),
                    "until": round(info["until"], 3), "cooldown_s": round(info["until"] - now, 1),
                    "offence": info["offence"]}
            dev = self.ctx.registry.device(device_id)
            self.ctx.emit("device_quarantined", body, device_id=device_id, place_id=dev.place_id if dev else None)
            log.warning("device quarantined: flooding the broker", extra={"fields": dict(body, device="%08x" % device_id)})

    def check(self):
        """Release what is due; pick up releases made from a shell (`fengqiao device release`)."""
        now = self.wall()
        held = self.broker.held()
        due = [d for d, info in held.items() if float(info.get("until", 0)) <= now]
        if due:
            self.broker.release_devices(due, reload=False)
            self._request_reload()
        for device_id in due:
            self._released(device_id, "cooldown")
        # Released from a shell: gone from held.json after we saw it there. Not what the MQTT
        # thread holds while its request waits (service.held() only): that is not in held.json yet.
        for device_id in (self._at_broker - set(held) - set(due)) & self.service.held():
            self._released(device_id, "operator")
        self._at_broker = set(held) - set(due)
        for device_id in self._at_broker - self.service.held():
            self.service.hold(device_id)    # held from elsewhere (another gateway start)

    def _released(self, device_id, by):
        self.service.release(device_id)
        self.quarantined_at.pop(device_id, None)
        self.refused_at.pop(device_id, None)
        dev = self.ctx.registry.device(device_id)
        self.ctx.emit("device_released", {"by": by}, device_id=device_id, place_id=dev.place_id if dev else None)
        log.info("device released from quarantine", extra={"fields": {"device": "%08x" % device_id, "by": by}})


def attach(app):
    """Gateway plugin: a flood guard on the service and the broker cut-off behind it."""
    try:
        s = _settings(app.config.section("quarantine"))
    except QuarantineConfigError as exc:
        from tools.errors import CliError

        raise CliError(str(exc)) from exc
    broker = app.broker
    allowance = broker.inflight + broker.queued
    detector = FloodDetector(s["flood_msgs_per_s"], allowance)
    q = Quarantine(broker, app.service, app.ctx, s["cooldown_s"], s["max_cooldown_s"], s["flood_msgs_per_s"])
    app.service.set_flood_guard(detector, q.on_flood)
    return q.start(s["check_interval_s"])
