"""The durable event log: append-only, SQLite in WAL mode, one hash chain over all events.

    store = EventStore(path, clock)
    store.append_device_events([NewDeviceEvent, ...]) -> [StoredEvent, ...]   # one transaction
    store.append_gateway_event(kind, body, device_id=None, place_id=None, actor="system")
    store.events_after(event_id, limit=500), store.get(event_id), store.head()
    store.find_device_event(device_id, key_id, seq), store.highest_seqs(), store.seq_windows()
    store.subscribe(callback)   # callback(list_of_new_events) in the committing thread, after commit

Durability: `synchronous=FULL` by default, so a returned append has reached the disk (WAL fsync);
the gateway acknowledges a device only after that return. A process killed at any instant either
committed the whole batch or none of it. UPDATE and DELETE on `events` are refused by triggers, and
(device_id, key_id, seq) is unique among device events, so a frame is stored at most once.

Anti-replay windows (gateway/pipeline.py, SPEC section 4): table `seq_windows` keeps, per (device,
key id), the highest stored seq and a 256-bit bitmap (32 bytes, big-endian: the last bit is the
highest seq itself) of which numbers below it are stored. It is written in the SAME transaction as
the events it covers, so it can never say "stored" for an event that was rolled back. A database
from before the table existed gets its windows rebuilt from the events when it is opened.

Hash chain (what a receiver recomputes; also SPEC section 10):

    hash(event) = SHA-256(prev_hash || record)          prev_hash of event 1 = 32 zero bytes

    record = deterministic CBOR (RFC 8949 section 4.2.1, cbor2 canonical=True) of the 13-item array
      [event_id: uint, source: text, kind: text, device_id: uint|null, key_id: uint|null,
       seq: uint|null, frame: bytes|null, topic: text|null, device_time: uint|null,
       received_at_us: uint (gateway time in integer microseconds), place_id: text|null,
       actor: text|null, body_json: text|null]

    body_json is null for device events (their body is inside `frame`, covered by the device MAC)
    and, for gateway events, json.dumps(body, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False) — the exact text kept in the database and returned by `body_json()`.

`record_bytes(...)` and `chain_hash(...)` below are the reference implementation.
"""

import hashlib
import json
import logging
import os
import sqlite3
import threading

import cbor2

from gateway.events import SOURCE_DEVICE, SOURCE_GATEWAY, ZERO_HASH, StoredEvent
from gateway.pipeline import WINDOW, SeqWindow

log = logging.getLogger("fengqiao.store")

_COLUMNS = (
    "event_id, source, kind, device_id, key_id, seq, body, frame, topic, device_time,"
    " received_at_us, place_id, actor, prev_hash, hash"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    device_id INTEGER,
    key_id INTEGER,
    seq INTEGER,
    body BLOB,              -- device: CBOR of the body (the frame's own bytes); gateway: body_json text
    frame BLOB,
    topic TEXT,
    device_time INTEGER,
    received_at_us INTEGER NOT NULL,
    place_id TEXT,
    actor TEXT,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_device_seq
    ON events(device_id, key_id, seq) WHERE source = 'device';
CREATE INDEX IF NOT EXISTS events_gateway_kind ON events(kind, event_id) WHERE source = 'gateway';
CREATE TABLE IF NOT EXISTS seq_windows (
    device_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    top INTEGER NOT NULL,   -- highest stored seq
    bits BLOB NOT NULL,     -- 32 bytes: bit i (from the least significant end) = seq top - i is stored
    PRIMARY KEY (device_id, key_id)
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
"""


_UPSERT_WINDOW = ("INSERT INTO seq_windows (device_id, key_id, top, bits) VALUES (?, ?, ?, ?)"
                  " ON CONFLICT(device_id, key_id) DO UPDATE SET top = excluded.top, bits = excluded.bits")


def _bits(window):
    return window.bits.to_bytes(WINDOW // 8, "big")


class StoreError(RuntimeError):
    """The log could not be written (disk, corruption, a duplicate that the caller should have caught)."""


class StoreDamaged(StoreError):
    """The database file is not a sound SQLite database (found by `check_database` at start)."""

    def __init__(self, path, detail):
        self.path, self.detail = str(path), detail
        super().__init__(
            "the gateway database %s is damaged: %s. The gateway does not start on it. Either stop, keep the"
            " damaged file aside and restore the last backup (`fengqiao gateway backup`; see 'Backup and"
            " restore' in gateway/README.md), or move it away and start a new chain with"
            " `fengqiao gateway run --new-chain` (the county then sees a new chain epoch)." % (path, detail))


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_database(path):
    """Raise StoreDamaged unless `path` is missing (False) or a sound SQLite file (True).

    Checks, in order: a zero-length file; the 16-byte SQLite header; a file shorter than the page
    count its header gives (truncated); then `PRAGMA quick_check` (every b-tree page, O(size): about
    a second per few hundred MB). A -wal file next to it is applied first, as SQLite always does.
    """
    path = str(path)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return False
    if size == 0:
        raise StoreDamaged(path, "the file is empty (0 bytes)")
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise StoreDamaged(path, "it does not start with the SQLite header (first bytes %s)" % header[:16].hex())
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if page_size < 512 or page_size & (page_size - 1):
        raise StoreDamaged(path, "its header gives an invalid page size %d" % page_size)
    if header[24:28] == header[92:96] and pages and size < pages * page_size:
        raise StoreDamaged(path, "the file is truncated: %d bytes, its header says %d pages of %d bytes (%d)"
                           % (size, pages, page_size, pages * page_size))
    try:
        db = sqlite3.connect("file:%s?mode=rw" % path, uri=True, isolation_level=None, timeout=30)
        try:
            problems = [r[0] for r in db.execute("PRAGMA quick_check(20)").fetchall()]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreDamaged(path, "SQLite cannot read it (%s)" % exc) from exc
    if problems != ["ok"]:
        raise StoreDamaged(path, "PRAGMA quick_check found %s%s" % (
            "; ".join(problems[:3]), " (and more)" if len(problems) > 3 else ""))
    return True


def backup_database(path, out):
    """A consistent copy of the live database `path` at `out` (SQLite online backup API).

    Safe while the gateway writes: in WAL mode the copy is one read snapshot (writers are not
    blocked), taken in a single step so a concurrent commit cannot restart it. Written to
    `out`.partial, fsynced, checked with `check_database` and only then renamed to `out`.
    Returns (number of events in the copy, its head event id).
    """
    path, out = str(path), str(out)
    if not check_database(path):
        raise StoreError("no database at %s" % path)
    if os.path.exists(out):
        raise StoreError("%s exists; not overwriting it" % out)
    partial = out + ".partial"
    for leftover in (partial, partial + "-wal", partial + "-shm", partial + "-journal"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    src = sqlite3.connect("file:%s?mode=rw" % path, uri=True, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)   # pages=-1: the whole database in one step, one snapshot
            dst.execute("PRAGMA journal_mode=DELETE")   # a single self-contained file
            count, head = dst.execute("SELECT COUNT(*), COALESCE(MAX(event_id), 0) FROM events").fetchone()
        finally:
            dst.close()
    finally:
        src.close()
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    check_database(partial)
    os.rename(partial, out)
    dirfd = os.open(os.path.dirname(os.path.abspath(out)), os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return count, head


def body_json(body):
    """The canonical JSON text of a gateway event body (hashed and stored as is)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_bytes(event_id, source, kind, device_id, key_id, seq, frame, topic, device_time,
                 received_at_us, place_id, actor, body_json_text):
    """Deterministic CBOR of the 13-item record array (see the module docstring)."""
    return cbor2.dumps(
        [event_id, source, kind, device_id, key_id, seq, frame, topic, device_time,
         received_at_us, place_id, actor, body_json_text],
        canonical=True,
    )


def chain_hash(prev_hash, record):
    return hashlib.sha256(prev_hash + record).digest()


def event_record(event):
    """The canonical record of a StoredEvent (to re-verify its hash)."""
    return record_bytes(
        event.event_id, event.source, event.kind, event.device_id, event.key_id, event.seq,
        event.frame, event.topic, event.device_time, to_us(event.received_at), event.place_id,
        event.actor, body_json(event.body) if event.source == SOURCE_GATEWAY else None,
    )


def to_us(t):
    return int(round(t * 1_000_000))


class EventStore:
    def __init__(self, path, clock, synchronous="FULL"):
        self.path = str(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._subscribers = []
        self._readers = threading.local()
        self._all_conns = []
        self.callback_errors = 0
        self._db = self._connect()
        self._db.execute("PRAGMA synchronous=%s" % {"FULL": "FULL", "NORMAL": "NORMAL"}[synchronous])
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT event_id, hash FROM events ORDER BY event_id DESC LIMIT 1").fetchone()
        self._head = (row[0], bytes(row[1])) if row else (0, ZERO_HASH)
        self._windows = self._load_windows()

    def _load_windows(self):
        windows = {(d, k): SeqWindow(top, int.from_bytes(bits, "big"))
                   for d, k, top, bits in self._db.execute("SELECT device_id, key_id, top, bits FROM seq_windows")}
        missing = {k: top for k, top in self.highest_seqs().items() if k not in windows}
        if missing:  # a database written before seq_windows existed: rebuild from the events
            rows = []
            for (d, k), top in missing.items():
                w = windows[(d, k)] = SeqWindow()
                for (seq,) in self._db.execute(
                        "SELECT seq FROM events WHERE source = 'device' AND device_id = ? AND key_id = ? AND seq > ?"
                        " ORDER BY seq", (d, k, top - WINDOW)):
                    w.mark(seq)
                rows.append((d, k, w.top, _bits(w)))
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(_UPSERT_WINDOW, rows)
            self._db.execute("COMMIT")
            log.info("rebuilt %d sequence window(s) from the stored events", len(rows))
        return windows

    def seq_windows(self):
        """{(device_id, key_id): SeqWindow} as committed (copies: the pipeline updates its own)."""
        with self._lock:
            return {k: w.copy() for k, w in self._windows.items()}

    def _connect(self):
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        self._all_conns.append(db)
        return db

    def _reader(self):
        db = getattr(self._readers, "db", None)
        if db is None:
            db = self._readers.db = self._connect()
        return db

    def close(self):
        with self._lock:
            for db in self._all_conns:
                db.close()
            self._all_conns = []

    # -- writing -----------------------------------------------------------------------------

    def append_device_events(self, items):
        """Append verified uplinks (NewDeviceEvent) in one transaction; returns the StoredEvents."""
        if not items:
            return []
        with self._lock:
            received_us = to_us(self.clock.now())
            received_at = received_us / 1_000_000
            event_id, prev = self._head
            rows, stored = [], []
            windows = {}
            for it in items:
                key = (it.device_id, it.key_id)
                w = windows.get(key)
                if w is None:
                    old = self._windows.get(key)
                    w = windows[key] = old.copy() if old else SeqWindow()
                w.mark(it.seq)
                event_id += 1
                rec = record_bytes(event_id, SOURCE_DEVICE, it.kind, it.device_id, it.key_id, it.seq,
                                   it.frame, it.topic, it.device_time, received_us, it.place_id, None, None)
                h = hashlib.sha256(prev + rec).digest()
                rows.append((event_id, SOURCE_DEVICE, it.kind, it.device_id, it.key_id, it.seq,
                             it.body_cbor if it.body_cbor is not None else cbor2.dumps(it.body), it.frame, it.topic, it.device_time, received_us,
                             it.place_id, None, prev, h))
                stored.append(StoredEvent(event_id, SOURCE_DEVICE, it.kind, it.device_id, it.key_id, it.seq,
                                          it.body, it.frame, it.topic, it.device_time, received_at,
                                          it.place_id, None, prev, h))
                prev = h
            self._commit(rows, [(d, k, w.top, _bits(w)) for (d, k), w in windows.items()])
            self._windows.update(windows)
            self._head = (event_id, prev)
        self._notify(stored)
        return stored

    def append_gateway_event(self, kind, body, device_id=None, place_id=None, actor="system"):
        """Append one event made by the gateway itself (offline, case step, ...)."""
        text = body_json(body)
        with self._lock:
            received_us = to_us(self.clock.now())
            event_id, prev = self._head
            event_id += 1
            rec = record_bytes(event_id, SOURCE_GATEWAY, kind, device_id, None, None, None, None, None,
                               received_us, place_id, actor, text)
            h = chain_hash(prev, rec)
            self._commit([(event_id, SOURCE_GATEWAY, kind, device_id, None, None, text, None, None, None,
                           received_us, place_id, actor, prev, h)])
            self._head = (event_id, h)
        event = StoredEvent(event_id, SOURCE_GATEWAY, kind, device_id, None, None, json.loads(text), None,
                            None, None, received_us / 1_000_000, place_id, actor, prev, h)
        self._notify([event])
        return event

    def _commit(self, rows, window_rows=()):
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO events (%s) VALUES (%s)" % (_COLUMNS, ",".join("?" * 15)), rows)
            if window_rows:
                db.executemany(_UPSERT_WINDOW, window_rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError("append of %d event(s) failed: %s" % (len(rows), exc)) from exc

    def subscribe(self, callback):
        """callback(list of new StoredEvents), called in the committing thread after each commit."""
        self._subscribers.append(callback)

    def _notify(self, events):
        for cb in list(self._subscribers):
            try:
                cb(events)
            except Exception:  # a subscriber's bug must not undo or block a committed append
                self.callback_errors += 1
                log.exception("store subscriber %r failed", cb)

    # -- reading -----------------------------------------------------------------------------

    def head(self):
        """(last event_id, its hash); (0, 32 zero bytes) when empty."""
        with self._lock:
            return self._head

    def events_after(self, event_id, limit=500):
        cur = self._reader().execute(
            "SELECT %s FROM events WHERE event_id > ? ORDER BY event_id LIMIT ?" % _COLUMNS, (event_id, limit))
        return [_row_to_event(r) for r in cur.fetchall()]

    def get(self, event_id):
        row = self._reader().execute("SELECT %s FROM events WHERE event_id = ?" % _COLUMNS, (event_id,)).fetchone()
        if row is None:
            raise KeyError(event_id)
        return _row_to_event(row)

    def find_device_event(self, device_id, key_id, seq):
        row = self._reader().execute(
            "SELECT %s FROM events WHERE source = 'device' AND device_id = ? AND key_id = ? AND seq = ?" % _COLUMNS,
            (device_id, key_id, seq)).fetchone()
        return _row_to_event(row) if row else None

    def gateway_events(self, kinds, after=0, limit=None):
        """Gateway events of the given kinds, in log order (indexed: cheap on a long log)."""
        kinds = list(kinds)
        sql = "SELECT %s FROM events WHERE source = 'gateway' AND kind IN (%s) AND event_id > ? ORDER BY event_id" % (
            _COLUMNS, ",".join("?" * len(kinds)))
        if limit:
            sql += " LIMIT %d" % int(limit)
        return [_row_to_event(r) for r in self._reader().execute(sql, kinds + [after]).fetchall()]

    def highest_seqs(self):
        """{(device_id, key_id): highest stored seq} (the persisted sequence state)."""
        cur = self._reader().execute(
            "SELECT device_id, key_id, MAX(seq) FROM events WHERE source = 'device' GROUP BY device_id, key_id")
        return {(d, k): s for d, k, s in cur.fetchall()}

    def last_device_events(self, kinds=None):
        """{device_id: received_at of its latest event} (for supervision after a restart)."""
        cur = self._reader().execute(
            "SELECT device_id, MAX(received_at_us) FROM events WHERE source = 'device' GROUP BY device_id")
        return {d: us / 1_000_000 for d, us in cur.fetchall()}

    def count(self):
        return self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def verify_chain(self, start=1, end=None):
        """Recompute the chain; returns the number of events checked or raises StoreError."""
        prev = ZERO_HASH if start == 1 else self.get(start - 1).hash
        n, after = 0, start - 1
        while True:
            batch = self.events_after(after, 1000)
            for ev in batch:
                if end is not None and ev.event_id > end:
                    return n
                if ev.event_id != after + 1 or ev.prev_hash != prev or chain_hash(prev, event_record(ev)) != ev.hash:
                    raise StoreError("hash chain broken at event %d" % ev.event_id)
                prev, after, n = ev.hash, ev.event_id, n + 1
            if not batch:
                return n


def _row_to_event(r):
    (event_id, source, kind, device_id, key_id, seq, body, frame, topic, device_time,
     received_us, place_id, actor, prev_hash, h) = r
    if source == SOURCE_DEVICE:
        body = cbor2.loads(body)
        frame = bytes(frame)
    else:
        body = json.loads(body)
    return StoredEvent(event_id, source, kind, device_id, key_id, seq, body, frame, topic, device_time,
                       received_us / 1_000_000, place_id, actor, bytes(prev_hash), bytes(h))
