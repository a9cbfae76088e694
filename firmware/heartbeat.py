"""Device supervision events shared by both roles: heartbeat, tamper switch, low battery.

- heartbeat every settings["heartbeat_interval_s"] (re-read each time, so a `config` downlink
  takes effect at the next beat): [battery_mv, uptime_s, outbox_depth, rssi_dbm or None, fw];
  stored with the lowest priority, the first thing a full outbox drops;
- tamper: one `tamper` event per debounced opening and per closing (drivers.tamper);
- battery: one `battery_low` per downward crossing of settings["low_battery_mv"], with the
  driver's hysteresis so a battery hovering at the threshold does not send a stream.
An event refused by a full outbox (OutboxFull) is logged and counted by the uplink, not retried.
"""

import gc
import time

import outbox
from drivers import battery, tamper
from protocol import frame


class Health:
    def __init__(self, board, uplink, settings, fw, log=print):
        self.board = board
        self.uplink = uplink
        self.settings = settings
        self.fw = fw
        self._t0 = self._hb = time.ticks_ms()  # start, for the uptime; _hb: the last heartbeat
        self._b = self._t0 - 60000  # the last battery sample: the first step takes one
        self.tamper = tamper.Tamper(board.tamper)
        self.battery = battery.Battery(board.battery_mv, low_mv=settings.get("low_battery_mv", 3400))

    def heartbeat(self):
        """Emit a heartbeat now; its seq, or None if the outbox refused it."""
        b = self.battery
        body = [b.mv if b.mv is not None else b.sample(), time.ticks_diff(time.ticks_ms(), self._t0) // 1000,
                len(self.uplink.outbox), self.board.rssi(), self.fw]
        try:
            return self.uplink.emit(frame.UP_HEARTBEAT, body, outbox.PRIO_HEARTBEAT)
        except outbox.OutboxFull:
            return None

    def step(self):
        """Tamper now, the battery once a second, the heartbeat when due. The board task calls
        this every ~10 ms (app/runtime.py): no task of its own, which was ~0.5 KB of heap (its
        Task, the supervisor's frame and its own). An event that meets MemoryError is lost, as
        it was when the health task failed on one; the board task carries on."""
        now = time.ticks_ms()
        b = self.battery
        emit = self.uplink.emit
        try:
            try:
                ev = self.tamper.poll()
                if ev is not None:
                    emit(frame.UP_TAMPER, [ev == tamper.OPENED], outbox.PRIO_NORMAL)
                if time.ticks_diff(now, self._b) >= 1000:
                    self._b = now
                    b.low_mv = self.settings.get("low_battery_mv", b.low_mv)
                    if b.poll() == battery.LOW:
                        emit(frame.UP_BATTERY_LOW, [b.mv], outbox.PRIO_NORMAL)
            except outbox.OutboxFull:
                pass  # logged by the uplink
            if time.ticks_diff(now, self._hb) >= self.settings.get("heartbeat_interval_s", 300) * 1000:
                self._hb = now
                self.heartbeat()
        except MemoryError:
            gc.collect()
