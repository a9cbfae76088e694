"""`fengqiao verify --broker ... --topic ... --count N`: check envelopes as they arrive at the county."""

import threading
import time

import pytest

from gateway.clock import ManualClock
from gateway.county import CountyRecorder
from gateway.keys import SigningKey
from gateway.store import EventStore
from gateway.tests.test_upstream_outage import TOPIC, alarm
from gateway.upstream import Upstream
from tools.cli import main as cli_main
from tools.testing.mosquitto import MosquittoProcess


def _run_verify(argv, out):
    out["rc"] = cli_main(argv)


@pytest.mark.timeout(60)
def test_live_subscription_verifies_and_reports_a_short_count(tmp_path, capsys):
    county = MosquittoProcess(tmp_path / "county").start()
    key = SigningKey.load_or_create(tmp_path / "gw.pem")
    (tmp_path / "gw.pub").write_text(key.public.raw.hex())
    store = EventStore(tmp_path / "g.db", ManualClock())
    shown = []
    # a subscriber that is surely subscribed before anything is published (the verify CLI races us)
    rec = CountyRecorder("127.0.0.1", county.port, "fq/v1/county/#", tmp_path / "rec.jsonl", client_id="rec-live",
                         on_envelope=shown.append).start()
    up = Upstream(store, key, "tw1", "127.0.0.1", county.port, TOPIC)
    try:
        out = {}
        argv = ["verify", "--pubkey", str(tmp_path / "gw.pub"), "--broker", "127.0.0.1:%d" % county.port,
                "--topic", "fq/v1/county/#", "--count", "30", "--timeout", "20", "--save", str(tmp_path / "live.jsonl")]
        t = threading.Thread(target=_run_verify, args=(argv, out))
        t.start()
        up.start()
        seq = 0
        while t.is_alive() and seq < 2000:  # the verifier joins whenever it has subscribed: mid-chain
            seq += 1
            store.append_device_events([alarm(seq)])
            time.sleep(0.01)
        t.join(30)
        text = capsys.readouterr().out
        assert out["rc"] == 0, text
        assert "OK" in text and "envelope(s)" in text
        assert len((tmp_path / "live.jsonl").read_text().splitlines()) >= 30
        assert up.wait_forwarded(seq, 10) and rec.wait_count(seq, 10) and len(shown) == seq

        argv[argv.index("--count") + 1] = "5"
        argv[argv.index("--timeout") + 1] = "1"
        assert cli_main(argv) == 1  # nothing more is published: 0 of 5
        assert "received only 0 of 5" in capsys.readouterr().out
    finally:
        up.close()
        rec.stop()
        store.close()
        county.stop()
