"""Device supervision events shared by both roles: heartbeat, tamper switch, low battery.

- heartbeat every settings["heartbeat_interval_s"] (re-read each time, so a `config` downlink
  takes effect at the next beat): [battery_mv, uptime_s, outbox_depth, rssi_dbm or None, fw];
  stored with the lowest priority, the first thing a full outbox drops;
- tamper: one `tamper` event per debounced opening and per closing (drivers.tamper);
- battery: one `battery_low` per downward crossing of settings["low_battery_mv"], with the
  driver's hysteresis so a battery hovering at the threshold does not send a stream.
An event refused by a full outbox (OutboxFull) is logged and counted by the uplink, not retried.
"""

import asyncio
from time import ticks_diff, ticks_ms

from drivers.battery import LOW, Battery
from drivers.tamper import OPENED, Tamper
from outbox import PRIO_HEARTBEAT, PRIO_NORMAL, OutboxFull
from protocol import frame


class Health:
    def __init__(self, board, uplink, settings, fw, log=print):
        self.board = board
        self.uplink = uplink
        self.settings = settings
        self.fw = fw
        self.started_ms = ticks_ms()
        self.tamper = Tamper(board.tamper)
        self.battery = Battery(board.battery_mv, low_mv=settings.get("low_battery_mv", 3400))

    def heartbeat(self):
        """Emit a heartbeat now; its seq, or None if the outbox refused it."""
        b = self.battery
        body = [b.mv if b.mv is not None else b.sample(), ticks_diff(ticks_ms(), self.started_ms) // 1000,
                len(self.uplink.outbox), self.board.rssi(), self.fw]
        try:
            return self.uplink.emit(frame.UP_HEARTBEAT, body, PRIO_HEARTBEAT)
        except OutboxFull:
            return None

    async def run(self, alive=None):
        last_beat = ticks_ms()
        last_batt = ticks_ms() - 60000
        b = self.battery
        emit = self.uplink.emit
        while True:
            if alive:
                alive("health")
            ev = self.tamper.poll()
            now = ticks_ms()
            try:
                if ev is not None:
                    emit(frame.UP_TAMPER, [ev == OPENED], PRIO_NORMAL)
                if ticks_diff(now, last_batt) >= 1000:
                    last_batt = now
                    b.low_mv = self.settings.get("low_battery_mv", b.low_mv)
                    if b.poll() == LOW:
                        emit(frame.UP_BATTERY_LOW, [b.mv], PRIO_NORMAL)
            except OutboxFull:
                pass  # logged by the uplink
            if ticks_diff(now, last_beat) >= self.settings.get("heartbeat_interval_s", 300) * 1000:
                last_beat = now
                self.heartbeat()
            await asyncio.sleep_ms(50)
