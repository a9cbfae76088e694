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
                                  acked cancel, or 2 h after the last ack). An
                                  alarm never acked stays "failing" as long as it is resent.
Buzzer: a short chirp when the hold is recognised; the `siren` downlink plays its pattern
(drivers.buzzer), and feedback beeps never mask a running siren.

A press that cannot be stored because the heap is out (MemoryError in emit) is kept in RAM and
stored again every 200 ms after a gc.collect(); the LED shows "failing" until it is on flash
(then "sending"), never "stored" (issue 11). A power cut meanwhile loses it: it was never stored.

If the outbox is full of unsent alarms (see outbox.py) a new alarm is refused: the LED shows
"failing" and the buzzer "error", and the older alarms keep being resent.

The open alarm survives a reboot or power cut: its seq and newest ack stage (or "closed") are
kept in `data/alarm.state` (9 bytes with a CRC, written by new file + rename on each change: a
few writes per alarm); an alarm still waiting in the outbox that is newer than that record (the
power went between the two writes, or the file is torn) is the open one. So after the power
comes back the light goes on saying "failing"/"sending", then "stored" and "coming" as the acks
for the alarm pressed before the cut arrive.

The runtime calls step() every ~10 ms from its board task (no task of its own: RAM).
"""

import gc
import os
import struct
from binascii import crc32
from time import ticks_diff, ticks_ms

from drivers.button import HOLD, TAPS, Button
from drivers.buzzer import Buzzer
from drivers.led import Led
from micropython import const
from outbox import PRIO_ALARM, PRIO_NORMAL, OutboxFull
from protocol import frame

_OPEN_MS = const(7200000)  # 2 h after the last ack with no news: back to idle
_NO_STAGE = const(255)
_CLOSED = const(254)
_RETRY_MS = const(200)  # a press that met MemoryError is stored again this often


class AlarmButton:
    def __init__(self, board, uplink, settings, failing_s=20):
        self.uplink = uplink
        self._f = failing_s * 1000  # no ack after this long: "failing"
        self.button = Button(board.button, hold_ms=settings.get("hold_ms", 1000))
        self.led = Led(board.led)
        self.buzzer = Buzzer(board.buzzer)
        self.alarm_seq = None  # the open alarm
        self.cancel_seq = None
        self.stage = None  # newest ack stage for the open alarm (None = not acked yet)
        self._t = ticks_ms()  # when the open alarm last changed
        self.refused = False
        self.pend = None  # a press not stored yet (MemoryError): ticks of the last attempt
        # The open alarm across reboots: data/alarm.state (beside the outbox), then any alarm
        # still waiting in the outbox that is newer than that record.
        ob = uplink.outbox
        self._path = ob.path.rsplit("/", 1)[0] + "/alarm.state"
        seq, stage = 0, _CLOSED
        try:
            with open(self._path, "rb") as f:
                raw = f.read(16)
            if len(raw) == 9 and struct.unpack(">I", raw[5:])[0] == crc32(raw[:5]):
                seq, stage = struct.unpack(">IB", raw)
        except OSError:
            pass
        # Walk the waiting events newer than the record, oldest first: the last alarm found is
        # the newest (one at a time: no list of a full outbox's seqs at boot).
        newest = 0
        s = ob.next_after(seq)
        while s is not None:
            try:
                if ob.read(s)[1][0] == frame.UP_ALARM:
                    newest = s
            except (KeyError, OSError, IndexError):
                pass
            s = ob.next_after(s)
        if newest:  # pressed after the state was last written (or the file is torn)
            self.alarm_seq = newest
        elif seq and stage != _CLOSED:
            self.alarm_seq = seq
            self.stage = None if stage == _NO_STAGE else stage
        uplink.listeners.append(self)

    def _save(self, seq=0):
        # seq: the alarm just closed (alarm_seq is None then).
        try:
            if self.alarm_seq is None:
                body = struct.pack(">IB", seq, _CLOSED)
            else:
                body = struct.pack(">IB", self.alarm_seq, _NO_STAGE if self.stage is None else self.stage)
            tmp = self._path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(body + struct.pack(">I", crc32(body)))
            os.rename(tmp, self._path)
        except OSError:
            pass  # only the light after a reboot depends on it; the alarm itself is in the outbox

    # -- state -> LED -------------------------------------------------------------------------
    def state(self):
        if self.pend is not None:
            return "failing"  # pressed, not stored yet (MemoryError): never "stored"
        if self.alarm_seq is None:
            return "failing" if self.refused else "idle"
        if self.stage is None or self.cancel_seq is not None:
            link = self.uplink.link
            if ticks_diff(ticks_ms(), self._t) > self._f or link is None or not link.up:
                return "failing"
            return "sending"
        return "coming" if self.stage >= 2 else "stored"

    def _close(self):
        seq = self.alarm_seq or 0
        self.alarm_seq = None
        self.cancel_seq = None
        self.stage = None
        self._save(seq)

    # -- uplink listener ----------------------------------------------------------------------
    def on_ack(self, seq, stage):
        if seq == self.alarm_seq:
            if stage >= 3:
                self._close()
            elif self.stage is None or stage > self.stage:
                self.stage = stage
                self._t = ticks_ms()
                self._save()
        elif seq == self.cancel_seq:
            self._close()

    def on_siren(self, on, pattern, duration_s):
        self.buzzer.siren(on, pattern, duration_s)

    def on_config(self, changed):
        if "hold_ms" in changed:
            self.button.hold_ms = changed["hold_ms"]

    # -- gestures, every ~10 ms -----------------------------------------------------------------
    def _store(self):
        """Store the pending press (self.pend: ticks of the last attempt, None: nothing pending)."""
        self.pend = ticks_ms()
        try:
            seq = self.uplink.emit(frame.UP_ALARM, [0], PRIO_ALARM)
        except OutboxFull:
            self.pend = None  # refused for good (full of older alarms): press again later
            self.refused = True
            self.buzzer.beep("error")
            return
        except MemoryError:
            gc.collect()  # kept: tried again in _RETRY_MS, "failing" meanwhile
            return
        # Stored: from here on nothing may make it pending again (it would be a second alarm).
        self.pend = None
        self.alarm_seq = seq
        self.cancel_seq = None
        self.stage = None
        self._t = ticks_ms()
        self.refused = False
        self.buzzer.beep("stored")
        self._save()

    def step(self):
        up = self.uplink
        g = self.button.poll()
        while g is not None:
            try:
                if g == HOLD:  # raise an alarm (kind 0, emergency)
                    self._store()
                elif g == TAPS and self.button.taps >= 3 and self.alarm_seq is not None:
                    self.cancel_seq = up.emit(frame.UP_ALARM_CANCEL, [self.alarm_seq], PRIO_NORMAL)
                    self._t = ticks_ms()
                    self.buzzer.beep("confirmed")
            except OutboxFull:
                self.buzzer.beep("error")  # a refused cancel leaves the alarm as it was
            except MemoryError:
                # A cancel not stored (the alarm stays open), or the bookkeeping after a stored
                # alarm (its state file: the outbox finds the alarm after a reboot anyway).
                gc.collect()
                self.buzzer.beep("error")
            g = self.button.poll()
        if self.pend is not None and ticks_diff(ticks_ms(), self.pend) >= _RETRY_MS:
            try:
                self._store()
            except MemoryError:
                gc.collect()
        if self.stage is not None and ticks_diff(ticks_ms(), self._t) > _OPEN_MS:
            self._close()  # acknowledged long ago and no news since: back to idle
        self.led.set(self.state())
        self.led.poll()
        self.buzzer.poll()
