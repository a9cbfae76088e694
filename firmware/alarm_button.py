"""The alarm-button role: a held press raises an alarm, and the LED says how far it got.

Gestures (drivers.button measures them on debounced edges):
- press and hold about one second (settings["hold_ms"], default 1000 ms): `alarm` (kind 0,
  emergency). The buzzer clicks and the LED starts "sending" the moment the hold is recognised,
  so the person knows they can let go. A brush or a tap (shorter than the hold) does nothing.
- three quick presses (each shorter than 0.4 s, less than 0.4 s apart) while an alarm is open:
  `alarm_cancel` for that alarm. With no open alarm, taps do nothing. A single tap, or a child's
  two taps, never cancel; a hold during a tap series restarts it as an alarm, never a cancel.

LED (and RGB colour), from the state of the newest alarm:
  sending   fast amber blink      stored on flash, being sent, no ack yet (first `failing_s`)
  stored    slow blue blink       ack stage 0/1: stored at the township / dispatched
  coming    steady green          ack stage 2: a responder acknowledged, someone is coming
  failing   red double flash      no ack after `failing_s` (20 s) or the link is down: still
                                  trying, the alarm is kept on flash and resent
  idle      off                   no open alarm (after stage 3 closed, stage 4 cancelled, an
                                  acked cancel, or `open_s` (2 h) after the last ack). An
                                  alarm never acked stays "failing" as long as it is resent.
Buzzer: a short chirp when the hold is recognised; the `siren` downlink plays its pattern
(drivers.buzzer), and feedback beeps never mask a running siren.

If the outbox is full of unsent alarms (see outbox.py) a new alarm is refused: the LED shows
"failing" and the buzzer "error", and the older alarms keep being resent.
"""

import asyncio
from time import ticks_diff, ticks_ms

from drivers.button import HOLD, TAPS, Button
from drivers.buzzer import Buzzer
from drivers.led import Led
from outbox import PRIO_ALARM, PRIO_NORMAL, OutboxFull
from protocol import frame

FAILING_S = 20
OPEN_S = 7200


class AlarmButton:
    def __init__(self, board, uplink, settings, log=print, failing_s=FAILING_S, open_s=OPEN_S):
        self.board = board
        self.uplink = uplink
        self.settings = settings
        self.log = log
        self.failing_ms = failing_s * 1000
        self.open_ms = open_s * 1000
        self.button = Button(board.button, hold_ms=settings.get("hold_ms", 1000))
        self.led = Led(board.led)
        self.buzzer = Buzzer(board.buzzer)
        self.alarm_seq = None  # the open alarm
        self.cancel_seq = None
        self.stage = None  # newest ack stage for the open alarm (None = not acked yet)
        self.since_ms = ticks_ms()  # when the open alarm last changed
        self.refused = False
        uplink.listeners.append(self)

    # -- state -> LED -------------------------------------------------------------------------
    def state(self):
        if self.alarm_seq is None:
            return "failing" if self.refused else "idle"
        if self.stage is None or self.cancel_seq is not None:
            link = self.uplink.link
            if ticks_diff(ticks_ms(), self.since_ms) > self.failing_ms or link is None or not link.up:
                return "failing"
            return "sending"
        return "coming" if self.stage >= 2 else "stored"

    def _close(self):
        self.alarm_seq = None
        self.cancel_seq = None
        self.stage = None

    # -- gestures -----------------------------------------------------------------------------
    def raise_alarm(self, kind=0):
        try:
            seq = self.uplink.emit(frame.UP_ALARM, [kind], PRIO_ALARM)
        except OutboxFull:
            self.refused = True
            self.buzzer.beep("error")
            return None
        self.refused = False
        self.alarm_seq = seq
        self.cancel_seq = None
        self.stage = None
        self.since_ms = ticks_ms()
        self.buzzer.beep("stored")
        return seq

    def cancel(self):
        if self.alarm_seq is None:
            return None
        try:
            self.cancel_seq = self.uplink.emit(frame.UP_ALARM_CANCEL, [self.alarm_seq], PRIO_NORMAL)
        except OutboxFull:
            self.buzzer.beep("error")
            return None
        self.since_ms = ticks_ms()
        self.buzzer.beep("confirmed")
        return self.cancel_seq

    # -- uplink listener ----------------------------------------------------------------------
    def on_ack(self, seq, stage):
        if seq == self.alarm_seq:
            if stage >= 3:
                self._close()
            elif self.stage is None or stage > self.stage:
                self.stage = stage
                self.since_ms = ticks_ms()
        elif seq == self.cancel_seq:
            self._close()

    def on_siren(self, on, pattern, duration_s):
        self.buzzer.siren(on, pattern, duration_s)

    def on_config(self, changed):
        if "hold_ms" in changed:
            self.button.hold_ms = changed["hold_ms"]

    # -- task ---------------------------------------------------------------------------------
    def step(self):
        g = self.button.poll()
        while g is not None:
            if g == HOLD:
                self.raise_alarm()
            elif g == TAPS and self.button.taps >= 3:
                self.cancel()
            g = self.button.poll()
        if self.stage is not None and ticks_diff(ticks_ms(), self.since_ms) > self.open_ms:
            self._close()  # acknowledged long ago and no news since: back to idle
        self.led.set(self.state())
        self.led.poll()
        self.buzzer.poll()

    async def run(self, alive=None):
        while True:
            if alive:
                alive("role")
            self.step()
            await asyncio.sleep_ms(10)
