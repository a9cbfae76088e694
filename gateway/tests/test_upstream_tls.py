"""Forwarding to a county broker over TLS with a username and password (the deployed setup)."""

import os
import pwd

import pytest

from gateway import envelope
from gateway.broker import ProjectBroker, hash_password
from gateway.clock import ManualClock
from gateway.county import CountyRecorder
from gateway.keys import SigningKey
from gateway.store import EventStore
from gateway.tests.test_upstream_outage import TOPIC, alarm
from gateway.upstream import Upstream
from tools.testing.mosquitto import MosquittoProcess


@pytest.mark.timeout(60)
def test_forwarding_over_tls_with_credentials(tmp_path):
    certs = ProjectBroker(tmp_path / "certs").setup()  # a local CA and a server cert for 127.0.0.1
    d = certs.workdir
    (tmp_path / "county.passwd").write_text("township-1:%s\ncounty:%s\n" % (hash_password("s3cret"),
                                                                             hash_password("c0unty")))
    (tmp_path / "county.passwd").chmod(0o600)
    conf = ("listener {port} 127.0.0.1\ncafile %s/ca.pem\ncertfile %s/server.pem\nkeyfile %s/server.key\n"
            "allow_anonymous false\npassword_file %s\nuser %s\n"
            % (d, d, d, tmp_path / "county.passwd", pwd.getpwuid(os.getuid()).pw_name))
    county = MosquittoProcess(tmp_path / "county", conf).start()
    key = SigningKey.generate()
    store = EventStore(tmp_path / "g.db", ManualClock())
    rec = CountyRecorder("127.0.0.1", county.port, "fq/v1/county/#", tmp_path / "rec.jsonl", client_id="rec-tls",
                         username="county", password="c0unty", cafile=certs.ca_path).start()
    wrong = Upstream(store, key, "tw1", "127.0.0.1", county.port, TOPIC, username="township-1", password="nope",
                     cafile=certs.ca_path, name="wrong", reconnect_max_s=0.5)
    up = Upstream(store, key, "tw1", "127.0.0.1", county.port, TOPIC, username="township-1", password="s3cret",
                  cafile=certs.ca_path)
    try:
        wrong.start()
        up.start()
        store.append_device_events([alarm(s) for s in range(1, 41)])
        assert up.wait_forwarded(40, 20), up.stats()
        assert rec.wait_count(40, 10)
        with open(tmp_path / "rec.jsonl") as f:
            assert envelope.verify_envelopes(f.read().splitlines(), key.public, first_event=1).ok
        assert not wrong.wait_forwarded(1, 0.5) and "refused" in wrong.last_error
        assert wrong.stats().get("connect_failures", 0) >= 1
    finally:
        wrong.close()
        up.close()
        rec.stop()
        store.close()
        county.stop()
