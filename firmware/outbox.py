"""Flash-backed outbox: an event is on flash before it is sent and leaves only when acked.

Failures it survives, and how:

- Power cut or kill -9 at any instant, including in the middle of an append: every record carries
  its length and a CRC32; a torn or corrupt record is detected and skipped (the scan resumes at the
  next record whose CRC verifies), never misread. A file found damaged is compacted at once, so
  the damage is not carried forward.
- Power cut during compaction: the new file (`outbox.new`) is written beside the old one, ends with
  a commit record, and replaces it by `os.rename` only when complete. On boot an incomplete
  `outbox.new` is deleted; a complete one with no `outbox.log` (FAT, whose rename cannot replace a
  file, lost power between remove and rename) is adopted.
- Flash full or failing: a refused append raises FlashFull (a kind of OutboxFull: the caller
  says "not stored"); a refused tombstone still forgets the event in RAM (after a reboot it is
  resent once more, a harmless duplicate); a failed compaction leaves the old file in use.
- Flash wear: an ack appends a 12-byte tombstone; the file is rewritten only when dead bytes
  exceed `compact_bytes` (or the live data, whichever is larger), not once per ack.
- Outbox full (`max_entries` entries or `max_bytes` of live records; the file itself stays below
  about twice that because of compaction): room is made by dropping the oldest heartbeat first,
  then (for a new non-heartbeat event) the oldest other non-alarm event. Alarms are never dropped. An
  alarm that still does not fit (the outbox is full of alarms) raises `OutboxFull`: the newest
  press is the one refused, because every stored alarm is an older emergency still unreported;
  the alarm role then shows "not getting through" and the person presses again later.
  A non-alarm event that does not fit is refused the same way (`OutboxFull`).
- Reboot: the order of events (ascending sequence number, which is append order) is rebuilt
  from the file, so resending after reconnect goes in order.

Record layout (big-endian): 0xFA | kind u8 | length u16 | payload | crc32 u32 of kind..payload.
Kinds: b"E" event (payload = seq u32, prio u8, data), b"A" removal (payload = seq u32),
b"C" commit (end of a compacted file, empty payload).

RAM: the outbox keeps only seq, priority, file offset and length per entry, in arrays allocated
once (11 bytes per entry of capacity: 2.8 KB for 256); the data is read back from flash when it
is sent.
"""

import os
import struct
from array import array
from binascii import crc32
from micropython import const

PRIO_HEARTBEAT = const(0)
PRIO_NORMAL = const(1)
PRIO_ALARM = const(2)

_MAGIC = const(0xFA)
_KIND_EVENT = const(0x45)
_KIND_REMOVE = const(0x41)
_KIND_COMMIT = const(0x43)
_HDR = const(4)  # magic, kind, length
_OVERHEAD = const(8)  # header + crc
_MAX_PAYLOAD = const(512)


class OutboxError(Exception):
    """Base of the outbox's errors."""


class OutboxFull(OutboxError):
    """The event does not fit even after dropping every lower-priority event."""


class FlashFull(OutboxFull):
    """The flash refused the write (file system full or failing): the event is not stored."""


class RecordTooLarge(OutboxError):
    """An event's data is larger than one record may hold."""


def _record(kind, payload):
    head = struct.pack(">BBH", _MAGIC, kind, len(payload))
    crc = crc32(payload, crc32(head[1:]))
    return head + payload + struct.pack(">I", crc & 0xFFFFFFFF)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def scan(path):
    """Yield (kind, offset_of_payload, payload) for every record whose CRC verifies.

    Also yields (None, offset, None) once for each stretch of bytes that is not a valid record
    (a torn tail or corruption), so callers can count damage.
    """
    try:
        f = open(path, "rb")
    except OSError:
        return
    try:
        pos = 0
        bad = False
        while True:
            f.seek(pos)
            head = f.read(_HDR)
            if not head:
                break
            ok = False
            if len(head) == _HDR and head[0] == _MAGIC:
                n = (head[2] << 8) | head[3]
                if n <= _MAX_PAYLOAD:
                    rest = f.read(n + 4)
                    if len(rest) == n + 4:
                        payload = rest[:n]
                        crc = crc32(payload, crc32(head[1:])) & 0xFFFFFFFF
                        if struct.unpack(">I", rest[n:])[0] == crc:
                            ok = True
            if ok:
                bad = False
                yield head[1], pos + _HDR, payload
                pos += _OVERHEAD + n
                continue
            if not bad:
                bad = True
                yield None, pos, None
            # Resynchronise at the next magic byte after this one.
            pos += 1
            while True:
                f.seek(pos)
                chunk = f.read(64)
                if not chunk:
                    return
                i = chunk.find(b"\xfa")
                if i >= 0:
                    pos += i
                    break
                pos += len(chunk)
    finally:
        f.close()


class Outbox:
    """Events waiting for the gateway's ack, in ascending seq order, persisted in `dir_path`."""

    def __init__(self, dir_path, max_entries=256, max_bytes=16384, compact_bytes=2048):
        self.path = dir_path + "/outbox.log"
        self._new = dir_path + "/outbox.new"
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.compact_bytes = compact_bytes
        self.dropped = 0  # events dropped to make room (counted for heartbeats/diagnostics)
        self.damaged = 0  # damaged stretches found on load
        self.compactions = 0
        self.write_errors = 0
        self._load()

    # -- state ------------------------------------------------------------------------------
    # Fixed-size arrays allocated once: no list growth, so no large reallocation in a
    # fragmented heap (a growing 256-entry list needs 2 KB contiguous on a 64-bit host).
    def _reset(self):
        cap = self.max_entries
        self._n = 0
        self._seqs = array("I", bytes(4 * cap))
        self._offs = array("I", bytes(4 * cap))  # offset of the record's payload in the file
        self._lens = array("H", bytes(2 * cap))  # payload length
        self._prios = bytearray(cap)
        self.live_bytes = 0  # bytes of live event records
        self.file_bytes = 0

    def _load(self):
        if _exists(self._new):
            if not _exists(self.path) and self._complete(self._new):
                os.rename(self._new, self.path)
            else:
                _remove(self._new)
        self._reset()
        end, over = self._rescan()
        try:
            size = os.stat(self.path)[6]
        except OSError:
            size = 0
        if over or self.damaged or size != end or self._dead() > self._threshold():
            self.compact()

    def _rescan(self):
        """Rebuild the in-RAM index from the file; returns (end of last good record, overflowed)."""
        self._n = 0
        self.live_bytes = 0
        end = 0
        over = False
        for kind, off, payload in scan(self.path):
            if kind is None:
                self.damaged += 1
                continue
            end = off + len(payload) + 4
            if kind == _KIND_EVENT and len(payload) >= 5:
                seq = struct.unpack(">I", payload)[0]
                if self._n and seq <= self._seqs[self._n - 1]:
                    self._drop_index(self._find(seq))  # a rewritten seq: the later record wins
                if self._n == self.max_entries:
                    self._drop_index(0)  # only if max_entries shrank between boots
                    over = True
                self._append(seq, payload[4], off, len(payload))
            elif kind == _KIND_REMOVE and len(payload) == 4:
                self._drop_index(self._find(struct.unpack(">I", payload)[0]))
        self.file_bytes = end
        return end, over

    def _complete(self, path):
        last = None
        for kind, _off, _payload in scan(path):
            last = kind
        return last == _KIND_COMMIT

    def _append(self, seq, prio, off, n):
        i = self._n
        self._seqs[i] = seq
        self._offs[i] = off
        self._lens[i] = n
        self._prios[i] = prio
        self._n = i + 1
        self.live_bytes += n + _OVERHEAD

    def _drop_index(self, i):
        if i < 0:
            return
        n = self._n
        self.live_bytes -= self._lens[i] + _OVERHEAD
        for a in (self._seqs, self._offs, self._lens, self._prios):
            mv = memoryview(a)
            mv[i:n - 1] = mv[i + 1:n]  # memmove, no allocation
        self._n = n - 1

    def _find(self, seq):
        lo, hi = 0, self._n
        seqs = self._seqs
        while lo < hi:
            mid = (lo + hi) >> 1
            if seqs[mid] < seq:
                lo = mid + 1
            else:
                hi = mid
        if lo < self._n and seqs[lo] == seq:
            return lo
        return -1

    def _dead(self):
        return self.file_bytes - self.live_bytes

    def _threshold(self):
        return max(self.compact_bytes, self.live_bytes)

    # -- queries ----------------------------------------------------------------------------
    def __len__(self):
        return self._n

    def seqs(self):
        """The seqs waiting, oldest first (a new list)."""
        return [self._seqs[i] for i in range(self._n)]

    def first(self):
        return self._seqs[0] if self._n else None

    def next_after(self, seq):
        """The smallest waiting seq greater than `seq`, or None."""
        for i in range(self._n):
            if self._seqs[i] > seq:
                return self._seqs[i]
        return None

    def __contains__(self, seq):
        return self._find(seq) >= 0

    def read(self, seq):
        """(prio, data) of a waiting event; KeyError if it is not waiting."""
        i = self._find(seq)
        if i < 0:
            raise KeyError(seq)
        with open(self.path, "rb") as f:
            f.seek(self._offs[i] + 5)
            data = f.read(self._lens[i] - 5)
        return self._prios[i], data

    def count(self, prio):
        return sum(1 for i in range(self._n) if self._prios[i] == prio)

    # -- changes ----------------------------------------------------------------------------
    def _write(self, rec):
        try:
            with open(self.path, "ab") as f:
                f.write(rec)
        except OSError as e:
            # Part of the record may be on flash: continue after whatever is there (the scan
            # skips the torn bytes), so later offsets stay right.
            try:
                self.file_bytes = os.stat(self.path)[6]
            except OSError:
                pass
            self.write_errors += 1
            raise FlashFull(str(e))
        start = self.file_bytes
        self.file_bytes += len(rec)
        return start

    def put(self, seq, prio, data):
        """Store an event before it is sent. Returns the list of seqs dropped to make room."""
        if len(data) + 5 > _MAX_PAYLOAD:
            raise RecordTooLarge(len(data))
        if self._n and seq <= self._seqs[self._n - 1]:
            raise ValueError("seq not increasing")
        need = len(data) + 5 + _OVERHEAD
        victims = []
        entries, size = self._n, self.live_bytes
        for victim_prio in (PRIO_HEARTBEAT, PRIO_NORMAL):
            if victim_prio > prio:
                break  # a heartbeat never displaces a check-in, tamper, boot ... event
            for i in range(self._n):
                if entries < self.max_entries and size + need <= self.max_bytes:
                    break
                if self._prios[i] == victim_prio:
                    victims.append(self._seqs[i])
                    entries -= 1
                    size -= self._lens[i] + _OVERHEAD
        if entries >= self.max_entries or size + need > self.max_bytes:
            raise OutboxFull(seq)
        for v in victims:
            self.remove(v)
            self.dropped += 1
        payload = struct.pack(">IB", seq, prio) + data
        start = self._write(_record(_KIND_EVENT, payload))
        self._append(seq, prio, start + _HDR, len(payload))
        return victims

    def remove(self, seq):
        """Forget an event (its ack arrived, or it is dropped). False if it was not waiting."""
        i = self._find(seq)
        if i < 0:
            return False
        try:
            self._write(_record(_KIND_REMOVE, struct.pack(">I", seq)))
        except FlashFull:
            pass  # forgotten in RAM anyway: after a reboot it is resent once more (a duplicate)
        self._drop_index(i)
        if self._dead() > self._threshold():
            try:
                self.compact()
            except OSError:
                self.write_errors += 1  # the old file is intact; try again at the next removal
        return True

    def compact(self):
        """Rewrite the live events into a new file and swap it in atomically."""
        _remove(self._new)
        pos = 0
        src = None
        offs = self._offs  # updated in place (each entry is read before its offset is replaced)
        moved = False
        try:
            try:
                if self._n:
                    src = open(self.path, "rb")
                with open(self._new, "wb") as out:
                    for i in range(self._n):
                        src.seek(offs[i])
                        payload = src.read(self._lens[i])
                        rec = _record(_KIND_EVENT, payload)
                        out.write(rec)
                        offs[i] = pos + _HDR
                        moved = True
                        pos += len(rec)
                    rec = _record(_KIND_COMMIT, b"")
                    out.write(rec)
                    pos += len(rec)
            finally:
                if src:
                    src.close()
        except Exception:  # noqa: BLE001 - MemoryError or OSError: the old file is intact
            if moved:
                self._rescan()  # offsets must point into the old file again
            _remove(self._new)
            raise
        try:
            os.rename(self._new, self.path)
        except OSError:
            # FAT cannot rename over an existing file; _load() adopts a complete .new if we
            # lose power between these two lines.
            _remove(self.path)
            os.rename(self._new, self.path)
        self.file_bytes = pos
        self.compactions += 1
