"""A lost store never silently forks the county's copy (issue 14, defect 2).

The signing key's chain marker makes a gateway refuse an empty store once the key has signed a
chain; `--new-chain` starts a new chain epoch that the county recorder and `fengqiao verify` show.
A restart without an epoch (what happened before) is recorded and reported as a fork, not dropped."""

import os

import pytest

from gateway import envelope
from gateway.clock import ManualClock
from gateway.keys import SigningKey
from gateway.store import EventStore
from gateway.tests.test_upstream_outage import _upstream, alarm, county  # noqa: F401 (fixture)
from gateway.upstream import NewChainRequired, chain_guard


def _dump(tmp_path):
    with open(tmp_path / "county.jsonl") as f:
        return f.read().splitlines()


def _run_chain(tmp_path, key, broker, db, n, marker, new_chain=False, t=1_767_225_600):
    store = EventStore(db, ManualClock(t))
    epoch = chain_guard(store, marker, "tw1", key.key_id, new_chain) if marker else None
    up = _upstream(store, key, broker).start()
    store.append_device_events([alarm(s) for s in range(1, n + 1)])   # re-registered devices start at 1
    head = store.head()[0]
    assert up.wait_forwarded(head, 30), up.stats()
    up.close()
    store.close()
    return epoch, head


@pytest.mark.timeout(90)
def test_lost_store_is_refused_then_a_new_epoch_is_seen(tmp_path, county):
    broker, rec = county
    key = SigningKey.load_or_create(tmp_path / "gw.pem")
    marker = str(tmp_path / "gw.pem.chain")
    assert _run_chain(tmp_path, key, broker, tmp_path / "g.db", 20, marker) == (1, 20)
    assert os.path.exists(marker)
    os.unlink(tmp_path / "g.db")                                       # the store is lost
    with pytest.raises(NewChainRequired, match="already signed chain epoch 1.*--new-chain"):
        chain_guard(EventStore(tmp_path / "g.db", ManualClock()), marker, "tw1", key.key_id)
    with pytest.raises(NewChainRequired, match="only for an empty store"):
        s = EventStore(tmp_path / "other.db", ManualClock())
        s.append_gateway_event("note", {})
        chain_guard(s, marker, "tw1", key.key_id, new_chain=True)
    assert _run_chain(tmp_path, key, broker, tmp_path / "g.db", 20, marker, new_chain=True) == (2, 21)
    assert rec.wait_count(41, 30), rec.count()
    assert rec.epochs == [("tw1", 2)] and rec.forks == 0
    report = envelope.verify_envelopes(_dump(tmp_path), key.public, first_event=1)
    assert report.ok, report.problems
    assert report.epochs == [("tw1", 2, 21)] and report.envelopes == 41
    assert "NEW CHAIN EPOCH 2" in report.summary()


@pytest.mark.timeout(90)
def test_a_restart_without_an_epoch_is_reported_as_a_fork(tmp_path, county):
    broker, rec = county
    key = SigningKey.load_or_create(tmp_path / "gw.pem")
    _run_chain(tmp_path, key, broker, tmp_path / "g.db", 10, None)
    os.unlink(tmp_path / "g.db")
    _run_chain(tmp_path, key, broker, tmp_path / "g.db", 10, None, t=1_767_225_900)   # the old behaviour
    assert rec.wait_count(20, 30), rec.count()
    assert rec.forks == 10 and rec.fork_ids == ["tw1:%d" % i for i in range(1, 11)]   # recorded, not dropped
    report = envelope.verify_envelopes(_dump(tmp_path), key.public, first_event=1)
    assert not report.ok and any("restarted or forked" in p for p in report.problems)
