"""The anti-replay window against protocol/vectors/seq_window.txt (SPEC section 4), frame by frame
through the real pipeline and store, one batch per arrival and all arrivals in one batch."""

import json

import pytest

from gateway.clock import ManualClock
from gateway.pipeline import DUPLICATE, NEW, REJECTED, Incoming, SeqState, process_batch
from gateway.registry import Registry
from gateway.store import EventStore
from protocol import frame, gen_seq_window

KEY = bytes(range(32))
DEV = 0x2A
NOW = 1_767_225_600
STATUS = {"new": (NEW, None), "duplicate": (DUPLICATE, None), "Replay": (REJECTED, "OutsideReplayWindow")}


def _vectors():
    with open(gen_seq_window.PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip() and not line.startswith("#")]


def _uplink(seq):
    k_up, _ = frame.derive_keys(KEY)
    topic = frame.uplink_topic(DEV)
    return Incoming(topic, frame.encode(k_up, topic, frame.UP_HEARTBEAT, DEV, 1, seq, NOW, [3700, seq, 0, None, 10000]))


def test_the_vectors_file_is_what_its_generator_makes():
    assert gen_seq_window.main(["--check"]) == 0


@pytest.mark.parametrize("one_batch", [False, True])
@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["name"])
def test_vector(tmp_path, vector, one_batch):
    clock = ManualClock(NOW)
    reg = Registry(tmp_path / "g.db", tmp_path / "master.key", clock)
    reg.add_device(DEV, "alarm_button", None, key=KEY)
    store = EventStore(tmp_path / "g.db", clock)
    try:
        batches = [vector["arrivals"]] if one_batch else [[s] for s in vector["arrivals"]]
        got = []
        for batch in batches:
            seqs = SeqState(store.seq_windows())   # as the service after each commit (or a restart)
            outs = process_batch([_uplink(s) for s in batch], reg.device_key, lambda d: None, seqs,
                                 lambda d, k, s: store.find_device_event(d, k, s) is not None, NOW)
            store.append_device_events([o.new for o in outs if o.status == NEW])
            got += [(o.status, o.reason) for o in outs]
        assert got == [STATUS[x] for x in vector["outcomes"]]
        want_stored = sorted({s for s, x in zip(vector["arrivals"], vector["outcomes"]) if x == "new"})
        assert sorted(e.seq for e in store.events_after(0, 10000)) == want_stored
    finally:
        store.close()
        reg.close()
