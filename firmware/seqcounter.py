"""Uplink sequence numbers that are never reused, without a flash write per event.

The counter reserves a block of `block` numbers ahead of use and persists only the block's end
(LoRaWAN 1.0.4 asks the same of frame counters). On boot it skips past the persisted end, so any
number handed out before a power cut is below every number handed out after it. Gaps (the unused
rest of a block) are allowed by SPEC section 4.

Failures it survives:
- power cut during the write of a reservation: two slot files (seq.a, seq.b) are written
  alternately (odd generations to seq.a, even ones to seq.b), each with a generation number
  and a CRC32; a torn slot fails its CRC and the other
  slot (the previous reservation) is used, plus one block more in case the damaged slot was a
  completed reservation that rotted after its numbers were used;
- both slots unreadable (flash corruption, or first boot): start at 1. After a factory reset this
  is right (new key); after corruption of both slots it is the one case that can reuse numbers,
  and only for a key whose slots were destroyed, which flash corruption of the identity would
  also do;
- key rotation: a slot belongs to a key id; a different key id starts a new sequence at 1
  (SPEC: "a new key id starts a new sequence");
- the 32-bit space of a key used up: OverflowError (rotate the key).

Flash writes: one per `block` events (the first next() of a boot reserves; a boot that numbers
nothing writes nothing). peek() before that is still right: a boot that wrote nothing leaves
the next boot the same first number, and no stored event carries it.

Private names are short and shared with other modules (each distinct name is a qstr): _n the
next number, hi the end of the reservation, _w the generation of the newest slot written.
"""

import struct
from binascii import crc32

# const() is the compiler's: no `from micropython import const` (it would cost a global).

_SLOT_LEN = const(13)  # ">BII" key_id, reserved end, generation; + crc32
_MAX_SEQ = const(0xFFFFFFFF)


class SeqCounter:
    def __init__(self, dir_path, key_id, block=64):
        self.root = dir_path
        self.key_id = key_id
        self.block = block
        self.writes = 0
        end = gen = 0
        damaged = False
        for c in "ab":
            try:
                with open("%s/seq.%s" % (dir_path, c), "rb") as f:
                    raw = f.read(_SLOT_LEN + 1)
            except OSError:
                continue
            if len(raw) != _SLOT_LEN or struct.unpack(">I", raw[9:])[0] != crc32(raw[:9]) & 0xFFFFFFFF:
                damaged = True  # present but torn or corrupt
                continue
            got = struct.unpack(">BII", raw[:9])
            if got[0] == key_id and got[2] >= gen:
                end, gen = got[1], got[2]
        if damaged and gen:
            # A torn write never got used, but a slot that rotted after use did: skipping one
            # more block covers both, and gaps cost nothing.
            end = min(end + block, _MAX_SEQ)
        self._w = gen
        self._n = end + 1
        self.hi = end  # nothing reserved yet in this boot: the first next() reserves

    def peek(self):
        """The number the next call to next() returns."""
        return self._n

    def next(self):
        """A fresh sequence number (>= 1), reserved on flash before it is returned."""
        n = self._n
        if n > self.hi:
            end = min(n - 1 + self.block, _MAX_SEQ)
            if end < n:
                raise OverflowError(self.key_id)
            self._w += 1
            body = struct.pack(">BII", self.key_id, end, self._w)
            with open("%s/seq.%s" % (self.root, "ba"[self._w & 1]), "wb") as f:
                f.write(body + struct.pack(">I", crc32(body) & 0xFFFFFFFF))
            self.hi = end
            self.writes += 1
        self._n = n + 1
        return n
