"""Device supervision: a silent device, a low battery and an opened case become gateway events.

Every verified uplink (not only heartbeats) proves the device is alive. A device is reported
`device_offline` when it has been silent for longer than its heartbeat interval times
`offline_factor`; its next uplink raises `device_online`. With a 30 s heartbeat, factor 2.5 and a
5 s check, a silent mains-powered button is reported within 75-80 s (goal: 90 s).

Battery: a `battery_low` uplink, or a heartbeat under `low_battery_mv`, raises
`device_battery_low`; a heartbeat at least `battery_ok_mv` (hysteresis) raises `device_battery_ok`.
Tamper: a `tamper` uplink with open=true raises `device_tamper_open`, open=false
`device_tamper_closed`. (Gateway kinds start with `device_` so they never read as device frames.) Each is raised once per change
(stored and forwarded like any other event), so a flapping value does not flood the log.

Clock: `device_clock_fault` when a device's clock is off by more than `clock_tolerance_s`, logged
as a warning; `device_clock_ok` at its next frame within the tolerance. Ahead is judged on every new
frame (an event cannot happen in the future). Behind is ambiguous, since an outbox resends old
records with their old times after an outage, so it is judged only on a heartbeat that found the
outbox empty (body[2] = 0), i.e. one sent as soon as it was made, and only when it is the
device's newest frame in the batch. The |skew| histogram is kept as before.

State after a restart: the offline / battery / tamper flags are rebuilt from the gateway events
already in the log, and every active device gets a fresh silence window starting at startup
(the broker redelivers what arrived while the gateway was down).
"""

import logging
import threading

from gateway.events import SOURCE_GATEWAY

log = logging.getLogger("fengqiao.supervision")

KINDS = ("device_offline", "device_online", "device_battery_low", "device_battery_ok", "device_tamper_open",
         "device_tamper_closed", "device_clock_fault", "device_clock_ok")


class Supervisor:
    def __init__(self, ctx, default_interval_s=30, offline_factor=2.5, low_battery_mv=3400, battery_ok_mv=3600,
                 clock_tolerance_s=120.0):
        self.ctx = ctx
        self.clock_tolerance_s = clock_tolerance_s
        self.clock_fault = set()
        self.default_interval_s = default_interval_s
        self.factor = offline_factor
        self.low_battery_mv = low_battery_mv
        self.battery_ok_mv = battery_ok_mv
        self._lock = threading.Lock()
        self.last_seen = {}      # device_id -> gateway time of its latest verified uplink
        self.offline = set()
        self.battery_low = set()
        self.tamper_open = set()
        self._restore()

    def attach(self, service, check_interval_s=5.0):
        service.add_observer(self.observe)
        service.add_timer(lambda ctx: self.check(), check_interval_s)
        return self

    def _restore(self):
        now = self.ctx.clock.now()
        for dev in self.ctx.registry.devices():
            if dev.status == "active":
                self.last_seen[dev.device_id] = now
        for ev in self.ctx.store.gateway_events(KINDS):  # indexed; read once at startup
            if ev.source == SOURCE_GATEWAY and ev.device_id is not None:
                self._apply(ev.kind, ev.device_id)

    def _apply(self, kind, device_id):
        flag = {"device_offline": (self.offline, True), "device_online": (self.offline, False),
                "device_battery_low": (self.battery_low, True), "device_battery_ok": (self.battery_low, False),
                "device_tamper_open": (self.tamper_open, True), "device_tamper_closed": (self.tamper_open, False),
                "device_clock_fault": (self.clock_fault, True), "device_clock_ok": (self.clock_fault, False)}[kind]
        (flag[0].add if flag[1] else flag[0].discard)(device_id)

    def interval_s(self, device_id):
        dev = self.ctx.registry.device(device_id)
        return (dev.heartbeat_interval_s if dev and dev.heartbeat_interval_s else self.default_interval_s)

    def _emit(self, kind, device_id, body):
        self._apply(kind, device_id)
        dev = self.ctx.registry.device(device_id)
        self.ctx.emit(kind, body, device_id=device_id, place_id=dev.place_id if dev else None)
        (log.warning if kind == "device_clock_fault" else log.info)(
            kind, extra={"fields": dict(body, device="%08x" % device_id)})

    def observe(self, outcomes):
        """Pipeline observer: called with each acknowledged batch (new and duplicate uplinks)."""
        now = self.ctx.clock.now()
        newest = {}
        for o in outcomes:
            if o.status == "new" and o.skew_s is not None:
                newest[o.device_id] = o
        for o in outcomes:
            if o.status != "new":
                continue
            d = o.device_id
            self._check_clock(o, newest.get(d) is o)
            with self._lock:
                self.last_seen[d] = now
                if d in self.offline:
                    self._emit("device_online", d, {"after_offline": True})
            kind, body = o.kind, o.new.body
            if kind == "battery_low" and d not in self.battery_low:
                self._emit("device_battery_low", d, {"battery_mv": body[0], "source": "battery_low"})
            elif kind == "heartbeat":
                mv = body[0]
                if mv < self.low_battery_mv and d not in self.battery_low:
                    self._emit("device_battery_low", d, {"battery_mv": mv, "source": "heartbeat"})
                elif mv >= self.battery_ok_mv and d in self.battery_low:
                    self._emit("device_battery_ok", d, {"battery_mv": mv})
            elif kind == "tamper":
                if body[0] and d not in self.tamper_open:
                    self._emit("device_tamper_open", d, {})
                elif not body[0] and d in self.tamper_open:
                    self._emit("device_tamper_closed", d, {})

    def _check_clock(self, o, newest):
        skew, tol = o.skew_s, self.clock_tolerance_s
        if skew is None or not tol:
            return
        d = o.device_id
        fresh = newest and o.kind == "heartbeat" and len(o.new.body) > 2 and o.new.body[2] == 0
        if skew > tol or (skew < -tol and fresh):
            if d not in self.clock_fault:
                self._emit("device_clock_fault", d, {"skew_s": round(skew, 1), "tolerance_s": tol, "seq": o.seq})
        elif -tol <= skew <= tol and d in self.clock_fault:
            self._emit("device_clock_ok", d, {"skew_s": round(skew, 1), "seq": o.seq})

    def check(self):
        """Timer: raise device_offline for every active device silent past its window."""
        now = self.ctx.clock.now()
        silent = []
        active = [dev.device_id for dev in self.ctx.registry.devices() if dev.status == "active"]
        with self._lock:
            for d in active:  # provisioned while we run: its window starts when first seen here
                self.last_seen.setdefault(d, now)
            for d, seen in list(self.last_seen.items()):
                if d in self.offline:
                    continue
                limit = self.interval_s(d) * self.factor
                if now - seen > limit:
                    silent.append((d, now - seen, limit))
        for d, quiet, limit in silent:
            dev = self.ctx.registry.device(d)
            if dev is None or dev.status != "active":
                with self._lock:
                    self.last_seen.pop(d, None)
                continue
            with self._lock:
                if d in self.offline:
                    continue
                self._emit("device_offline", d, {"silent_s": round(quiet, 1), "limit_s": limit})
        self._gauges()
        return [d for d, _, _ in silent]

    def watch(self, device_id):
        """Start supervising a newly provisioned device (its silence window starts now)."""
        with self._lock:
            self.last_seen.setdefault(device_id, self.ctx.clock.now())

    def _gauges(self):
        m = getattr(self.ctx, "metrics", None)
        if m is not None:
            with self._lock:
                m.set("fengqiao_devices_offline", len(self.offline))
                m.set("fengqiao_devices_online", len(self.last_seen) - len(self.offline & self.last_seen.keys()))
