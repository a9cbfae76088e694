"""The event log: numbering, hash chain, append-only, uniqueness, subscribers, reopen."""

import sqlite3

import pytest

from gateway.clock import ManualClock
from gateway.events import ZERO_HASH, NewDeviceEvent
from gateway.store import EventStore, StoreError, chain_hash, event_record


def _dev(seq, device_id=42, kind="alarm", body=(0,)):
    return NewDeviceEvent(kind, device_id, 1, seq, list(body), b"frame%d" % seq, "fq/v1/%08x/up" % device_id,
                          None, "village-1")


def test_append_numbers_and_chains(tmp_path):
    clock = ManualClock(1_000.5)
    store = EventStore(tmp_path / "g.db", clock)
    got = store.append_device_events([_dev(1), _dev(2, kind="checkin", body=(7, b"\x01\x02\x03\x04"))])
    ev = store.append_gateway_event("device_offline", {"silent_s": 95}, device_id=42, place_id="v")
    assert [e.event_id for e in got] + [ev.event_id] == [1, 2, 3]
    assert got[0].prev_hash == ZERO_HASH and got[1].prev_hash == got[0].hash and ev.prev_hash == got[1].hash
    assert store.head() == (3, ev.hash)
    again = store.events_after(0)
    assert again == got + [ev]
    assert again[1].body == [7, b"\x01\x02\x03\x04"] and again[2].body == {"silent_s": 95}
    assert again[0].received_at == 1_000.5
    assert chain_hash(ev.prev_hash, event_record(ev)) == ev.hash
    assert store.verify_chain() == 3
    assert store.find_device_event(42, 1, 2).event_id == 2
    assert store.find_device_event(42, 1, 3) is None
    assert store.highest_seqs() == {(42, 1): 2}
    assert store.gateway_events(["device_offline", "tamper_open"]) == [ev]
    assert store.gateway_events(["alarm"]) == []  # device events are not gateway events
    store.close()


def test_reopen_continues_chain(tmp_path):
    store = EventStore(tmp_path / "g.db", ManualClock())
    store.append_device_events([_dev(1)])
    store.close()
    store = EventStore(tmp_path / "g.db", ManualClock())
    (ev,) = store.append_device_events([_dev(5)])
    assert ev.event_id == 2 and ev.prev_hash == store.get(1).hash
    assert store.verify_chain() == 2
    store.close()


def test_duplicate_seq_rejects_whole_batch(tmp_path):
    store = EventStore(tmp_path / "g.db", ManualClock())
    store.append_device_events([_dev(1)])
    with pytest.raises(StoreError):
        store.append_device_events([_dev(2), _dev(1)])
    assert store.count() == 1 and store.head()[0] == 1
    (ev,) = store.append_device_events([_dev(2)])
    assert ev.event_id == 2
    store.close()


def test_append_only_and_tamper_detected(tmp_path):
    path = tmp_path / "g.db"
    store = EventStore(path, ManualClock())
    store.append_device_events([_dev(1), _dev(2)])
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE events SET kind = 'x' WHERE event_id = 1")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM events")
    db.execute("DROP TRIGGER events_no_update")  # an attacker with file access: the chain shows it
    db.execute("UPDATE events SET seq = 9 WHERE event_id = 1")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="event 1"):
        store.verify_chain()
    store.close()


def test_subscribers_called_after_commit_and_errors_contained(tmp_path):
    store = EventStore(tmp_path / "g.db", ManualClock())
    seen = []

    def bad(events):
        raise RuntimeError("subscriber bug")

    store.subscribe(bad)
    store.subscribe(lambda events: seen.append([(e.event_id, store.get(e.event_id).kind) for e in events]))
    store.append_device_events([_dev(1), _dev(2)])
    store.append_gateway_event("tamper_open", {})
    assert seen == [[(1, "alarm"), (2, "alarm")], [(3, "tamper_open")]]
    assert store.callback_errors == 2
    store.close()


def test_record_encoding_is_canonical_cbor():
    import random

    import cbor2

    from gateway.store import record_bytes

    rnd = random.Random(9)
    for _ in range(500):
        vals = [rnd.choice([None, rnd.randrange(2 ** rnd.choice([3, 5, 8, 9, 16, 17, 32, 33, 63])),
                            "".join(chr(rnd.randrange(32, 0x3000)) for _ in range(rnd.randrange(30))),
                            rnd.randbytes(rnd.randrange(300))]) for _ in range(13)]
        assert record_bytes(*vals) == cbor2.dumps(vals, canonical=True)


def test_seq_windows_are_committed_with_the_events_and_rebuilt_for_an_older_database(tmp_path):
    from gateway.pipeline import SeqWindow

    store = EventStore(tmp_path / "g.db", ManualClock())
    store.append_device_events([_dev(1), _dev(4)])
    with pytest.raises(StoreError):                     # a failed batch leaves the window as it was
        store.append_device_events([_dev(9), _dev(1)])
    assert store.seq_windows() == {(42, 1): SeqWindow(4, 0b1001)}
    store.close()
    db = sqlite3.connect(tmp_path / "g.db")
    assert db.execute("SELECT top, hex(bits) FROM seq_windows").fetchall() == [(4, "00" * 31 + "09")]
    db.execute("DROP TABLE seq_windows")               # as a database from before the table existed
    db.commit()
    db.close()
    store = EventStore(tmp_path / "g.db", ManualClock())
    assert store.seq_windows() == {(42, 1): SeqWindow(4, 0b1001)}
    store.close()
