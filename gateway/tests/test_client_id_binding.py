"""Issue 13 item 2 against the real broker AND the real gateway: a device (or a tool login) that
claims the gateway's client id, with a persistent or a clean session, or another device's client
id, takes over nobody: the gateway never reconnects (so its backlog grace never restarts: checked),
the victim device is never dropped, and each of its alarms is acknowledged. (A genuine reconnect
does reopen the grace, by design; a flood in it is still cut off: test_flood_quarantine.py.) (The broker alone, with
raw clients: gateway/tests/test_broker.py test_client_id_is_the_username_no_takeover.) ~8 s."""

import threading

import paho.mqtt.client as mqtt
import pytest

from gateway.console.testing import Township
from tools.testing.procs import wait_for

VICTIM, THIEF = 0x102, 0x201


class _Raw:
    """A plain paho login with the client id and session of our choice."""

    def __init__(self, port, username, password, client_id, clean):
        self.present, self.up, self.down = None, threading.Event(), threading.Event()
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self.down.set()
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self.present = bool(flags.session_present)
            self.up.set()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(90)
def test_nobody_takes_over_the_gateway_or_another_device(tmp_path):
    t = Township(tmp_path, county=False, plugins=("gateway.cases",), devices=(0x101, VICTIM, 0x103, 0x104, THIEF))
    t.start()
    try:
        svc = t.app.service
        victim = t.sim_button(VICTIM)
        dropped = threading.Event()
        victim.client.on_disconnect = lambda *a: dropped.set()
        connects, grace_until = svc._connects, svc._throttle_from
        thief_creds = t.broker.device_credentials(THIEF, t.keys[THIEF])
        tool_creds = t.broker.tool_credentials("observer")
        claims = [(thief_creds, "gateway", False), (thief_creds, "gateway", True),
                  (thief_creds, "fengqiao-gateway", False), (thief_creds, "fengqiao-gateway", True),
                  (thief_creds, "sim-%08x" % VICTIM, True), (thief_creds, "%08x" % VICTIM, True),
                  (tool_creds, "gateway", True), (tool_creds, "fengqiao-gateway", False)]
        for creds, client_id, clean in claims:
            thief = _Raw(t.broker.port, *creds, client_id, clean)
            try:
                wait_for(thief.up.is_set, 10, "%s to connect as %r" % (creds[0], client_id))
                assert thief.present is False, "%s got the session of %r" % (creds[0], client_id)
                seq = victim.alarm()
                wait_for(lambda: 0 in victim.acks.get(seq, []), 10,
                         "the victim's alarm ack while %s claims %r" % (creds[0], client_id))
            finally:
                thief.close()
            assert svc._connects == connects, "the gateway reconnected after %s claimed %r" % (creds[0], client_id)
            # so its backlog grace (no throttling, set on each connect) was not opened again
            assert svc._throttle_from == grace_until, "the grace period restarted after %r" % client_id
            assert not dropped.is_set(), "the victim was dropped by %s claiming %r" % (creds[0], client_id)
        assert svc._connected.is_set()
    finally:
        t.stop()
