"""Upstream forwarding against a real county Mosquitto: outages, restarts, kill -9, order, once."""

import os
import pwd
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from gateway import envelope
from gateway.clock import ManualClock, SystemClock
from gateway.county import CountyRecorder
from gateway.events import NewDeviceEvent
from gateway.keys import SigningKey
from gateway.store import EventStore
from gateway.upstream import Upstream, UpstreamError
from protocol import frame as pframe
from tools.testing.mosquitto import MosquittoProcess
from tools.testing.procs import REPO_ROOT, wait_for

# The county broker keeps the recorder's persistent session across its own restart. `user` = us:
# as root Mosquitto would switch to user "mosquitto" and fail to save its database in our tmp dir.
COUNTY_CONF = ("listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
               "persistence_location {workdir}/\nmax_queued_messages 0\nuser %s\n"
               % pwd.getpwuid(os.getuid()).pw_name)
TOPIC = "fq/v1/county/tw1"
DEVICE_KEY = bytes(range(32))
K_UP, _ = pframe.derive_keys(DEVICE_KEY)


def alarm(seq, device_id=0x2A):
    topic = pframe.uplink_topic(device_id)
    data = pframe.encode(K_UP, topic, pframe.UP_HEARTBEAT, device_id, 1, seq, 1_767_225_600, [3300, seq, 0, None, 10203])
    return NewDeviceEvent("heartbeat", device_id, 1, seq, [3300, seq, 0, None, 10203], data, topic, 1_767_225_600,
                          "v1-h1")


@pytest.fixture
def county(tmp_path):
    broker = MosquittoProcess(tmp_path / "county", COUNTY_CONF).start()
    rec = CountyRecorder("127.0.0.1", broker.port, "fq/v1/county/#", tmp_path / "county.jsonl",
                         client_id="county-%s" % os.urandom(3).hex()).start()
    yield broker, rec
    rec.stop()
    broker.stop()


def _upstream(store, key, broker, **kw):
    kw.setdefault("reconnect_max_s", 0.5)
    return Upstream(store, key, "tw1", "127.0.0.1", broker.port, TOPIC, **kw)


def _persisted_cursor(db_path):
    with sqlite3.connect(db_path) as db:
        row = db.execute("SELECT event_id FROM upstream_cursor WHERE name = 'county'").fetchone()
    return row[0] if row else 0


def _check_dump(tmp_path, rec, key, n):
    assert rec.wait_count(n, 30), "county got %d of %d envelopes" % (rec.count(), n)
    assert rec.ids == ["tw1:%d" % i for i in range(1, n + 1)]  # all, in order, each once
    with open(tmp_path / "county.jsonl") as f:
        lines = f.read().splitlines()
    report = envelope.verify_envelopes(lines, key.public, {0x2A: DEVICE_KEY}, first_event=1)
    assert report.ok, report.problems
    assert report.envelopes == n and report.macs_checked > 0


def _only_broker_redeliveries(rec, acked_before_outage):
    """The forwarder sent nothing twice: the only envelopes the recorder saw again are ones the county
    broker had delivered before it was stopped, without having processed the recorder's PUBACK yet
    (at-least-once to a persistent session; the recorder drops them by id)."""
    allowed = {"tw1:%d" % i for i in range(1, acked_before_outage + 1)}
    assert set(rec.duplicate_ids) <= allowed, rec.duplicate_ids


@pytest.mark.timeout(90)
def test_county_down_for_a_while_then_back(tmp_path, county):
    broker, rec = county
    key = SigningKey.load_or_create(tmp_path / "gw.pem")
    store = EventStore(tmp_path / "g.db", ManualClock())
    up = _upstream(store, key, broker).start()
    store.append_device_events([alarm(s) for s in range(1, 21)])
    assert up.wait_forwarded(20, 20)
    wait_for(lambda: _persisted_cursor(tmp_path / "g.db") == 20, 10, "cursor 20 on disk")

    broker.stop()
    wait_for(lambda: not up.stats()["connected"], 10, "the forwarder to notice the outage")
    seq = 21
    for i in range(30):  # 300 device events and 30 gateway events while the county is away
        store.append_device_events([alarm(s) for s in range(seq, seq + 10)])
        seq += 10
        store.append_gateway_event("device_offline", {"i": i}, device_id=0x2A, place_id="v1-h1")
    total = store.head()[0]
    assert total == 350
    wait_for(lambda: up.stats().get("connect_failures", 0) >= 2, 20, "reconnect attempts during the outage")
    assert up.stats()["queue_depth"] == total - 20 and up.cursor()[0] == 20

    broker.start()  # same port, like the county coming back
    assert up.wait_forwarded(total, 60), up.stats()
    _check_dump(tmp_path, rec, key, total)
    _only_broker_redeliveries(rec, 20)
    stats = up.stats()
    assert stats["queue_depth"] == 0 and stats["disconnects"] == 1
    assert stats["published_messages"] < total  # batched after the outage: one signature per batch
    up.close()
    assert _persisted_cursor(tmp_path / "g.db") == total
    store.close()


@pytest.mark.timeout(90)
def test_outage_in_the_middle_of_a_burst(tmp_path, county):
    broker, rec = county
    key = SigningKey.load_or_create(tmp_path / "gw.pem")
    store = EventStore(tmp_path / "g.db", SystemClock(), synchronous="NORMAL")
    up = _upstream(store, key, broker, window=4, batch_max=20).start()
    n = 1500

    def burst():
        for s in range(1, n + 1):
            store.append_device_events([alarm(s)])
            if s % 50 == 0:
                time.sleep(0.02)

    t = threading.Thread(target=burst)
    t.start()
    wait_for(lambda: up.cursor()[0] >= 100, 30, "forwarding under way")
    broker.stop()
    time.sleep(1.0)
    broker.start()
    t.join(60)
    assert up.wait_forwarded(n, 60), up.stats()
    _check_dump(tmp_path, rec, key, n)  # a redelivered envelope (lost PUBACK) is recorded once
    assert up.stats()["disconnects"] >= 1
    up.close()
    store.close()


SCRIPT = r"""
import sys, time
sys.path.insert(0, %(root)r)
from gateway.clock import SystemClock
from gateway.keys import SigningKey
from gateway.store import EventStore
from gateway.upstream import Upstream
from gateway.tests.test_upstream_outage import alarm
store = EventStore(%(db)r, SystemClock(), synchronous="NORMAL")
up = Upstream(store, SigningKey.load_or_create(%(key)r), "tw1", "127.0.0.1", %(port)d, %(topic)r,
              batch_max=5, window=2, cursor_every_s=0.05).start()
seq = store.head()[0]
print("ready", flush=True)
while True:
    seq += 1
    store.append_device_events([alarm(seq)])
    time.sleep(0.002)
"""


@pytest.mark.timeout(90)
def test_kill_9_of_the_gateway_resumes_from_the_persisted_cursor(tmp_path, county):
    broker, rec = county
    db, keyfile = str(tmp_path / "g.db"), str(tmp_path / "gw.pem")
    SigningKey.load_or_create(keyfile)
    code = SCRIPT % dict(root=REPO_ROOT, db=db, key=keyfile, port=broker.port, topic=TOPIC)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        wait_for(lambda: rec.count() >= 300, 40, "300 envelopes forwarded by the first gateway process")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    key = SigningKey.load_or_create(keyfile)
    store = EventStore(db, SystemClock())
    head = store.head()[0]
    cursor = _persisted_cursor(db)
    assert 0 < cursor <= head
    up = _upstream(store, key, broker).start()  # the restarted gateway
    store.append_device_events([alarm(head + 1)])
    assert up.wait_forwarded(head + 1, 30), up.stats()
    _check_dump(tmp_path, rec, key, head + 1)
    up.close()
    store.close()


def test_configuration_errors_are_named(tmp_path):
    store = EventStore(tmp_path / "g.db", ManualClock())
    key = SigningKey.generate()
    with pytest.raises(UpstreamError, match="gateway id"):
        Upstream(store, key, "a:b", "127.0.0.1", 1, TOPIC)
    with pytest.raises(UpstreamError, match="plain topic"):
        Upstream(store, key, "tw1", "127.0.0.1", 1, "fq/#")
    with pytest.raises(UpstreamError, match="unknown"):
        Upstream.from_config({"host": "h", "port": 1, "topic": "t", "colour": "red"}, store, key, "tw1")
    with pytest.raises(UpstreamError, match="needs 'topic'"):
        Upstream.from_config({"host": "h", "port": 1}, store, key, "tw1")
    up = Upstream.from_config({"host": "h", "port": 1883, "topic": "t", "window": 2}, store, key, "tw1")
    assert up.window == 2 and up.port == 1883
    up.close()
    up = Upstream.from_config({"host": "h", "port": 1, "topic": "t", "reconnect_max_s": 5}, store, key, "tw1")
    assert (up.reconnect_min_s, up.reconnect_max_s) == (0.2, 5.0)   # the county link's back-off cap
    up.close()
    for bad in ({"reconnect_max_s": 0}, {"reconnect_max_s": "30"}, {"reconnect_min_s": 10, "reconnect_max_s": 5}):
        with pytest.raises(UpstreamError, match="reconnect_m"):
            Upstream.from_config({"host": "h", "port": 1, "topic": "t", **bad}, store, key, "tw1")
    import tomllib
    with open(os.path.join(os.path.dirname(__file__), "..", "gateway.sample.toml"), "rb") as f:
        sample = tomllib.load(f)["upstream"]
    up = Upstream.from_config(sample, store, key, "tw1")   # every key of the sample is known
    assert up.reconnect_max_s == 30.0
    up.close()
    store.close()


def test_cursor_naming_a_replaced_store_is_reported(tmp_path):
    key = SigningKey.generate()
    store = EventStore(tmp_path / "g.db", ManualClock())
    store.append_device_events([alarm(1), alarm(2)])
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute("CREATE TABLE IF NOT EXISTS upstream_cursor (name TEXT PRIMARY KEY, event_id INTEGER NOT NULL,"
                   " hash BLOB NOT NULL, updated_at_us INTEGER NOT NULL)")
        db.execute("INSERT INTO upstream_cursor VALUES ('county', 2, ?, 0)", (b"\x01" * 32,))
    up = Upstream(store, key, "tw1", "127.0.0.1", 1, TOPIC)
    assert up.cursor()[0] == 2 and up.stats()["chain_errors"] == 1 and up.queue_depth() == 0
    up.close()
    up.close()  # idempotent
    store.append_device_events([alarm(3)])  # a closed forwarder ignores new commits
    store.close()


@pytest.mark.timeout(60)
def test_county_refusing_our_publishes_keeps_the_cursor(tmp_path):
    acl = tmp_path / "county.acl"
    acl.write_text("topic read fq/v1/county/#\n")  # anonymous clients may read, not write
    broker = MosquittoProcess(tmp_path / "county", COUNTY_CONF + "acl_file %s\n" % acl).start()
    key = SigningKey.generate()
    store = EventStore(tmp_path / "g.db", ManualClock())
    up = _upstream(store, key, broker).start()
    try:
        store.append_device_events([alarm(1), alarm(2)])
        wait_for(lambda: up.stats().get("refused_by_upstream", 0) >= 2, 20, "the refusal to be noticed twice")
        assert up.cursor()[0] == 0 and up.queue_depth() == 2 and _persisted_cursor(tmp_path / "g.db") == 0
        assert "refused" in up.last_error
    finally:
        up.close()
        store.close()
        broker.stop()


@pytest.mark.timeout(90)
def test_gateway_restarted_during_the_outage_resumes_from_the_cursor(tmp_path, county):
    broker, rec = county
    key = SigningKey.load_or_create(tmp_path / "gw.pem")
    clock = ManualClock()
    store = EventStore(tmp_path / "g.db", clock)
    up = _upstream(store, key, broker).start()
    store.append_device_events([alarm(s) for s in range(1, 11)])
    assert up.wait_forwarded(10, 20)
    broker.stop()
    for hour in range(3):  # hours of outage on the gateway clock; events keep being stored
        clock.advance(3600)
        store.append_device_events([alarm(s) for s in range(11 + 10 * hour, 21 + 10 * hour)])
    up.close()
    store.close()

    store = EventStore(tmp_path / "g.db", clock)  # the gateway restarts, the county is still away
    up = _upstream(store, key, broker).start()
    assert up.cursor()[0] == 10 and up.queue_depth() == 30
    store.append_gateway_event("device_offline", {"silent_s": 10800}, device_id=0x2A)
    broker.start()
    assert up.wait_forwarded(41, 30), up.stats()
    _check_dump(tmp_path, rec, key, 41)
    _only_broker_redeliveries(rec, 10)
    up.close()
    store.close()
