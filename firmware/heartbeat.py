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
        self.log = log
        self.started_ms = ticks_ms()
        self.tamper = Tamper(board.tamper)
        self.battery = Battery(board.battery_mv, low_mv=settings.get("low_battery_mv", 3400))
        self.beats = 0

    def _emit(self, msg_type, body, prio):
        try:
            return self.uplink.emit(msg_type, body, prio)
        except OutboxFull:
            return None

    def heartbeat(self):
        mv = self.battery.mv if self.battery.mv is not None else self.battery.sample()
        up_s = ticks_diff(ticks_ms(), self.started_ms) // 1000
        body = [mv, up_s, len(self.uplink.outbox), self.board.rssi(), self.fw]
        self.beats += 1
        return self._emit(frame.UP_HEARTBEAT, body, PRIO_HEARTBEAT)

    async def run(self, alive=None):
        last_beat = ticks_ms()
        last_batt = ticks_ms() - 60000
        while True:
            if alive:
                alive("health")
            ev = self.tamper.poll()
            if ev is not None:
                self._emit(frame.UP_TAMPER, [ev == OPENED], PRIO_NORMAL)
            now = ticks_ms()
            if ticks_diff(now, last_batt) >= 1000:
                last_batt = now
                self.battery.low_mv = self.settings.get("low_battery_mv", self.battery.low_mv)
                if self.battery.poll() == LOW:
                    self._emit(frame.UP_BATTERY_LOW, [self.battery.mv], PRIO_NORMAL)
            interval_ms = self.settings.get("heartbeat_interval_s", 300) * 1000
            if ticks_diff(now, last_beat) >= interval_ms:
                last_beat = now
                self.heartbeat()
            await asyncio.sleep_ms(50)
