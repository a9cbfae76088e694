"""The patrol check-in-point role: a card tapped on the reader becomes a `checkin` event.

- A card is counted when it enters the field (it must leave the field for `_GONE_POLLS` reads
  before the same card can be counted again), and the same card at most once per
  settings["checkin_repeat_s"] (default 600 s): a patrol member who taps twice, or leaves the
  card on the reader, makes one event. A repeat within the interval gets the "stored" beep again
  (the card was read) but no new event.
- Beeps "stored" (and LED amber) as soon as the event is on flash (first thing after emit()
  returns, before any bookkeeping that allocates), even with no network, and
  "confirmed" (two beeps, LED green) when the gateway's ack for that event arrives.
- The event carries the device time of the tap; if the clock is not known yet the outbox keeps
  the tap's ticks and the frame is stamped when the clock becomes known (app/uplink.py), so
  check-ins made offline are placed correctly later.
- A tap whose event cannot be stored for want of heap (MemoryError) gets no beep; the card is
  read again every 100 ms while it stays in the field, and stored once there is room.
- A reader that locks up and cannot be re-initialised (drivers.mfrc522.ReaderError): LED "error"
  while it lasts, logged once per fault, retried every poll; no event is made from it.
LED otherwise: "idle" (off) when the link is up or nothing is waiting, "failing" (red double
flash) when check-ins are waiting and the link is down.

The runtime calls step() every ~10 ms from its board task (no task of its own: RAM); the reader
is asked every 100 ms.
"""

import gc
from time import ticks_diff, ticks_ms

from drivers.buzzer import Buzzer
from drivers.led import Led
from drivers.mfrc522 import ReaderError
from micropython import const
from outbox import PRIO_NORMAL, OutboxFull
from protocol import frame

_GONE_POLLS = const(3)
_MAX_SEEN = const(32)
_POLL_MS = const(100)


class CheckinPoint:
    def __init__(self, board, uplink, settings, checkpoint_id, log=print):
        self.uplink = uplink
        self.settings = settings
        self.checkpoint_id = checkpoint_id
        self.log = log
        self.reader = board.rfid()
        self.led = Led(board.led)
        self.buzzer = Buzzer(board.buzzer)
        self.seen = {}  # uid -> ticks_ms when last counted
        self.pending = {}  # seq -> uid, waiting for the gateway's ack
        self.present = None
        self.absent = 0
        self.fault = False
        self._t = ticks_ms()  # the last read of the reader
        uplink.listeners.append(self)

    def card(self, uid):
        """A card entered the field. Returns the event's seq, or None (repeat / refused)."""
        now = ticks_ms()
        repeat_ms = self.settings.get("checkin_repeat_s", 600) * 1000
        seen = self.seen
        for uid_old in [u for u, t in seen.items() if ticks_diff(now, t) >= repeat_ms]:
            del seen[uid_old]
        while len(seen) >= _MAX_SEEN:  # bounded: forget the oldest
            oldest = None
            for u, t in seen.items():
                if oldest is None or ticks_diff(t, seen[oldest]) < 0:
                    oldest = u
            del seen[oldest]
        if uid in seen:
            self.buzzer.beep("stored")
            self.led.flash("checkin_stored")
            return None
        try:
            seq = self.uplink.emit(frame.UP_CHECKIN, [self.checkpoint_id, uid], PRIO_NORMAL)
        except OutboxFull:
            self.buzzer.beep("error")
            return None
        # The event is on flash: say so before anything else allocates (issue 11: a MemoryError
        # here cost the "stored" beep of a stored check-in). From here on a MemoryError is caught:
        # the caller tries a card again only when it was not stored.
        try:
            self.buzzer.beep("stored")
            self.led.flash("checkin_stored")
            seen[uid] = now
            if len(self.pending) < _MAX_SEEN:
                self.pending[seq] = uid
        except MemoryError:
            # Bookkeeping only: the event is stored and sent all the same; without it a repeat
            # tap may make a second event and the ack brings no "confirmed" beep.
            gc.collect()
            self.log("checkin: %s %d" % ("MemoryError after storing", seq))
        return seq

    def on_ack(self, seq, stage):
        if self.pending.pop(seq, None) is not None:
            self.buzzer.beep("confirmed")
            self.led.flash("checkin_confirmed")

    def on_siren(self, on, pattern, duration_s):
        self.buzzer.siren(on, pattern, duration_s)

    def on_config(self, changed):
        pass  # checkin_repeat_s is read from settings at every card

    def step(self):
        if ticks_diff(ticks_ms(), self._t) >= _POLL_MS:
            self._t = ticks_ms()
            self._read()
        self.led.poll()
        self.buzzer.poll()

    def _read(self):
        uid = None
        if self.reader is not None:
            try:
                uid = self.reader.read_uid()
                if self.fault:
                    self.log("checkin: reader recovered")
                self.fault = False
            except ReaderError as e:
                if not self.fault:
                    self.log("checkin: %s" % e)
                self.fault = True
        if uid is not None:
            uid = bytes(uid)
            self.absent = 0
            if uid != self.present:
                try:
                    self.card(uid)
                except MemoryError:
                    # Not stored (no heap to store it now): the card is not taken as seen, so the
                    # next read (100 ms) tries again while it is still in the field, and the
                    # "stored" beep comes once it is on flash (issue 11: taps met by a MemoryError
                    # were lost until the card was taken away and tapped again).
                    gc.collect()
                    return
                self.present = uid
        elif self.present is not None:
            self.absent += 1
            if self.absent >= _GONE_POLLS:
                self.present = None
        link = self.uplink.link
        if self.fault:
            self.led.set("error")
        elif len(self.uplink.outbox) and (link is None or not link.up):
            self.led.set("failing")
        else:
            self.led.set("idle")
