"""Issue 14 (storm): a downlink another thread queued (an alarm's sirens, from the case handler)
leaves while the MQTT thread is still busy with a batch, and never after a later downlink to the
same device (downlink seqs go out in order). No broker: paho's publish is recorded. ~0.1 s."""

import threading

import pytest

from gateway.clock import ManualClock
from gateway.pipeline import Incoming
from gateway.registry import Registry
from gateway.service import GatewayService, MqttSettings
from gateway.store import EventStore
from protocol import frame

NOW = 1_767_225_600
KEY = bytes(range(32))
DEVS = list(range(0x40, 0x40 + 8))
SIREN = 0x200


@pytest.fixture
def service(tmp_path):
    clock = ManualClock(NOW)
    reg = Registry(tmp_path / "g.db", tmp_path / "master.key", clock)
    for d in DEVS + [SIREN]:
        reg.add_device(d, "alarm_button", None, key=KEY)
    store = EventStore(tmp_path / "g.db", clock)
    svc = GatewayService(store, reg, clock, MqttSettings("127.0.0.1", 1, "gateway", "x"), max_batch=500)
    svc._io_thread = threading.current_thread()      # this thread plays the MQTT thread
    sent = []
    _, k_down = frame.derive_keys(KEY)

    def publish(topic, data, qos=0):
        f = frame.decode(k_down, topic, data, downlink=True)
        sent.append((f.device_id, f.seq))
    svc._client.publish = publish
    svc._client.ack = lambda mid, qos: None
    yield svc, sent
    svc._wake_r.close()
    svc._wake_w.close()
    store.close()
    reg.close()


def _batch(n):
    out = []
    k_up, _ = frame.derive_keys(KEY)
    for i in range(n):
        d = DEVS[i % len(DEVS)]
        topic = frame.uplink_topic(d)
        seq = i // len(DEVS) + 1
        out.append(Incoming(topic, frame.encode(k_up, topic, frame.UP_HEARTBEAT, d, 1, seq, NOW,
                                                [3700, seq, 0, None, 10000]), seq, 1, 0.0))
    return out


def test_a_queued_siren_leaves_during_the_batch_not_after_it(service):
    svc, sent = service
    batch = _batch(400)
    queued = threading.Event()
    verify = svc.registry.device_key

    def key_lookup(*args):
        # the case handler queues a siren while the MQTT thread verifies frame ~10 of the batch
        if not queued.is_set():
            t = threading.Thread(target=svc.ctx.send_downlink, args=(SIREN, 0x82, [True, 1, 60]))
            t.start()
            t.join()
            queued.set()
        return verify(*args)
    svc.registry.device_key = key_lookup
    outs = svc.process(batch, svc._gen)
    assert len(outs) == 400 and [d for d, _ in sent].count(SIREN) == 1
    # sent at the next 64-frame step of the verification: before every ack of the batch
    assert sent[0][0] == SIREN and len(sent) == 401


def test_a_downlink_queued_earlier_goes_out_before_a_later_one_to_the_same_device(service):
    svc, sent = service
    t = threading.Thread(target=svc.ctx.send_ack, args=(DEVS[0], 7, 1))
    t.start()
    t.join()
    assert list(svc._outbox) and sent == []
    svc.ctx.send_ack(DEVS[0], 8, 0)            # in the MQTT thread: the queued one first
    assert not svc._outbox and len(sent) == 2
    (d1, s1), (d2, s2) = sent
    assert d1 == d2 == DEVS[0] and s1 < s2
