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
- Flash full or failing: a refused append raises OutboxFull(the OSError) (the caller says
  "not stored"); a refused tombstone still forgets the event in RAM (after a reboot it is
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

RAM: the outbox keeps only seq, file offset, and priority with length per entry, in three arrays
allocated once (8 bytes per entry of capacity: 2 KB for 256); the data is read back from flash
when it is sent. Offsets are u16, so max_bytes and compact_bytes are capped at 30 KB: compaction
then keeps the file below 64 KB (live + max(compact_bytes, live) + one record), and an event
that would still start beyond 64 KB (compaction failing) is refused with OutboxFull. A file
from an older firmware is within that bound with the default sizes (16 KB).

Errors: OutboxFull (args: the refused seq, or the OSError of a write the flash refused);
ValueError for an event too large for a record or a seq that does not increase.

Private names are short and shared with other modules (each distinct name is a qstr, ~11 bytes of
heap for good): _n entries, _q their seqs, _at their payload offsets, _p their prio << 12 |
payload length; _enc builds a record, _put appends one, load() rebuilds the index from the file.
"""

import os
import struct
from array import array
from binascii import crc32

# const() is the compiler's: no `from micropython import const` (it would cost a global).

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
_LEN = const(0xFFF)  # _p entry: prio << 12 | payload length
_MAX_BYTES = const(30720)  # offsets are u16: see RAM above


class OutboxFull(Exception):
    """The event is not stored: it does not fit even after dropping every lower-priority event,
    or the flash refused the write."""


def _enc(kind, data):
    head = struct.pack(">BBH", _MAGIC, kind, len(data))
    crc = crc32(data, crc32(head[1:]))
    return head + data + struct.pack(">I", crc & 0xFFFFFFFF)


def stat(path):
    """The file's size, or -1 if it does not exist."""
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


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
        self.path = path = dir_path + "/outbox.log"
        new = path[:-3] + "new"  # outbox.new, the compaction in progress
        self.max_bytes = max_bytes = min(max_bytes, _MAX_BYTES)
        self.compact_bytes = compact_bytes = min(compact_bytes, _MAX_BYTES)
        self.dropped = 0  # events dropped to make room (counted for heartbeats/diagnostics)
        self.damaged = 0  # damaged stretches found on load
        self.compactions = 0
        # Fixed-size arrays allocated once: no list growth, so no large reallocation in a
        # fragmented heap (a growing 256-entry list needs 2 KB contiguous on a 64-bit host).
        # The capacity (max_entries) is len(self._p).
        self._q = array("I", bytes(4 * max_entries))
        self._at = array("H", bytes(2 * max_entries))
        self._p = array("H", bytes(2 * max_entries))
        if stat(new) >= 0:
            last = None
            for kind, _off, _payload in scan(new):
                last = kind
            if stat(path) < 0 and last == _KIND_COMMIT:  # complete, and the old file is gone
                os.rename(new, path)
            else:
                try:
                    os.remove(new)
                except OSError:
                    pass  # a .new that cannot be removed (a directory?) is left alone, unused
        if self.load() or self.damaged or max(stat(path), 0) != self.file_bytes or \
                self.file_bytes - self.live_bytes > max(compact_bytes, self.live_bytes):
            self.compact()

    # -- state ------------------------------------------------------------------------------
    def load(self):
        """Rebuild the in-RAM index from the file (file_bytes = end of the last good record);
        True if it held more events than the capacity."""
        self._n = 0
        self.live_bytes = 0  # bytes of live event records
        end = 0
        over = False
        for kind, off, payload in scan(self.path):
            if kind is None:
                self.damaged += 1
                continue
            end = off + len(payload) + 4
            if kind == _KIND_EVENT and len(payload) >= 5:
                if off > 0xFFFF:  # beyond a u16 offset (an older firmware with max_bytes > 30 KB)
                    over = True  # dropped, never misread; compacted now
                    continue
                seq = struct.unpack(">I", payload)[0]
                if self._n and seq <= self._q[self._n - 1]:
                    self._drop(seq)  # a rewritten seq: the later record wins
                i = self._n
                if i == len(self._p):
                    self._drop(self._q[0])  # only if max_entries shrank between boots
                    over = True
                    i -= 1
                self._q[i] = seq
                self._at[i] = off
                self._p[i] = payload[4] << 12 | len(payload)
                self._n = i + 1
                self.live_bytes += len(payload) + _OVERHEAD
            elif kind == _KIND_REMOVE and len(payload) == 4:
                self._drop(struct.unpack(">I", payload)[0])
        self.file_bytes = end
        return over

    def _drop(self, seq):
        """Forget `seq` in RAM (binary search, then memmove); False if it was not waiting."""
        lo, n = 0, self._n
        hi = n
        q = self._q
        while lo < hi:
            i = (lo + hi) >> 1
            if q[i] < seq:
                lo = i + 1
            else:
                hi = i
        if lo == n or q[lo] != seq:
            return False
        self.live_bytes -= (self._p[lo] & _LEN) + _OVERHEAD
        for a in (q, self._at, self._p):
            mv = memoryview(a)
            mv[lo:n - 1] = mv[lo + 1:n]  # no allocation
        self._n = n - 1
        return True

    # -- queries ----------------------------------------------------------------------------
    def __len__(self):
        return self._n

    def seqs(self):
        """The seqs waiting, oldest first: a read-only view, valid until the next put or remove
        (no copy: a list of 256 ints is 2 KB in one piece on a 64-bit port)."""
        return memoryview(self._q)[:self._n]

    def first(self):
        """The oldest waiting seq, or 0 when nothing is waiting."""
        return self._q[0] if self._n else 0

    def next_after(self, seq):
        """The smallest waiting seq greater than `seq`, or None."""
        for i in range(self._n):
            if self._q[i] > seq:
                return self._q[i]
        return None

    def read(self, seq):
        """(prio, data) of a waiting event; KeyError if it is not waiting."""
        for i in range(self._n):  # the uplink sends oldest first: found near the start
            if self._q[i] == seq:
                with open(self.path, "rb") as f:
                    f.seek(self._at[i] + 5)
                    data = f.read((self._p[i] & _LEN) - 5)
                return self._p[i] >> 12, data
        raise KeyError(seq)

    # -- changes ----------------------------------------------------------------------------
    def _put(self, buf):
        """Append a record; returns its offset. OutboxFull(the OSError) if the flash refuses; any
        other exception (MemoryError in open or write) is raised as it is.

        After any failure part of the record may be on flash: file_bytes is read again from the
        file and later records go after whatever is there (the scan skips the torn bytes), so
        their offsets stay right. file_bytes -1: that read failed too (MemoryError); the next
        append reads it first."""
        if self.file_bytes < 0:
            self.file_bytes = max(stat(self.path), 0)
        try:
            with open(self.path, "ab") as f:
                f.write(buf)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the size is right again
            self.file_bytes = -1
            self.file_bytes = max(stat(self.path), 0)
            if isinstance(e, OSError):
                raise OutboxFull(e)
            raise
        start = self.file_bytes
        self.file_bytes += len(buf)
        return start

    def put(self, seq, prio, data):
        """Store an event before it is sent. Returns the list of seqs dropped to make room."""
        n = len(data) + 5  # payload: seq, prio, data
        if n > _MAX_PAYLOAD or self._n and seq <= self._q[self._n - 1]:
            raise ValueError(seq)  # too large for a record, or not increasing
        need = n + _OVERHEAD
        cap = len(self._p)
        victims = []
        entries, size = self._n, self.live_bytes
        for victim_prio in (PRIO_HEARTBEAT, PRIO_NORMAL):
            if victim_prio > prio:
                break  # a heartbeat never displaces a check-in, tamper, boot ... event
            for i in range(self._n):
                if entries < cap and size + need <= self.max_bytes:
                    break
                if self._p[i] >> 12 == victim_prio:
                    victims.append(self._q[i])
                    entries -= 1
                    size -= (self._p[i] & _LEN) + _OVERHEAD
        if entries >= cap or size + need > self.max_bytes or self.file_bytes + need > 0xFFFF:
            raise OutboxFull(seq)
        for v in victims:
            self.remove(v)
            self.dropped += 1
        start = self._put(_enc(_KIND_EVENT, struct.pack(">IB", seq, prio) + data))
        i = self._n
        self._q[i] = seq
        self._at[i] = start + _HDR
        self._p[i] = prio << 12 | n
        self._n = i + 1
        self.live_bytes += need
        return victims

    def remove(self, seq):
        """Forget an event (its ack arrived, or it is dropped). False if it was not waiting."""
        if not self._drop(seq):
            return False
        try:
            self._put(_enc(_KIND_REMOVE, struct.pack(">I", seq)))
        except OutboxFull:
            pass  # forgotten in RAM anyway: after a reboot it is resent once more (a duplicate)
        if self.file_bytes - self.live_bytes > max(self.compact_bytes, self.live_bytes):
            try:
                self.compact()
            except OSError:
                pass  # the old file is intact; try again at the next removal
        return True

    def compact(self):
        """Rewrite the live events into a new file and swap it in atomically."""
        new = self.path[:-3] + "new"
        try:
            os.remove(new)
        except OSError:
            pass
        pos = 0
        src = None
        offs = self._at  # updated in place (each entry is read before its offset is replaced)
        moved = False
        try:
            try:
                if self._n:
                    src = open(self.path, "rb")
                with open(new, "wb") as out:
                    for i in range(self._n):
                        src.seek(offs[i])
                        rec = _enc(_KIND_EVENT, src.read(self._p[i] & _LEN))
                        out.write(rec)
                        offs[i] = pos + _HDR
                        moved = True
                        pos += len(rec)
                    rec = _enc(_KIND_COMMIT, b"")
                    out.write(rec)
                    pos += len(rec)
            finally:
                if src:
                    src.close()
        except Exception:  # noqa: BLE001 - MemoryError or OSError: the old file is intact
            if moved:
                self.load()  # offsets must point into the old file again
            try:
                os.remove(new)
            except OSError:
                pass
            raise
        try:
            os.rename(new, self.path)
        except OSError:
            # FAT cannot rename over an existing file; the constructor adopts a complete .new
            # if we lose power between these two lines.
            os.remove(self.path)
            os.rename(new, self.path)
        self.file_bytes = pos
        self.compactions += 1
