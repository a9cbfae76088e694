"""/metrics text format, JSON logs and the rate limiter of rejection logs."""

import io
import json
import logging
import urllib.error
import urllib.request

import pytest

from gateway.logs import RateLimitedLog, setup_logging
from gateway.metrics import Metrics, MetricsServer


def test_render_counters_gauges_histograms():
    m = Metrics()
    m.inc("fengqiao_rejections_total", {"reason": "BadMac"}, 2)
    m.inc("fengqiao_rejections_total", {"reason": 'we"ird'})
    m.set("fengqiao_devices_online", 3)
    m.gauge_fn("fengqiao_forward_queue_depth", lambda: 17)
    m.gauge_fn("fengqiao_broken", lambda: 1 / 0, "a source that fails")
    for v in (0.0005, 0.003, 0.003, 0.04):
        m.observe("fengqiao_verify_to_ack_seconds", v)
    text = m.render()
    assert '# TYPE fengqiao_rejections_total counter' in text
    assert 'fengqiao_rejections_total{reason="BadMac"} 2' in text
    assert 'fengqiao_rejections_total{reason="we\\"ird"} 1' in text
    assert "fengqiao_devices_online 3" in text and "fengqiao_forward_queue_depth 17" in text
    assert "# fengqiao_broken unavailable: ZeroDivisionError" in text
    assert 'fengqiao_verify_to_ack_seconds_bucket{le="0.001"} 1' in text
    assert 'fengqiao_verify_to_ack_seconds_bucket{le="0.005"} 3' in text
    assert 'fengqiao_verify_to_ack_seconds_bucket{le="+Inf"} 4' in text
    assert "fengqiao_verify_to_ack_seconds_count 4" in text
    assert m.histogram("fengqiao_verify_to_ack_seconds").quantile(0.5) == 0.005


@pytest.mark.timeout(30)
def test_http_endpoint():
    m = Metrics()
    m.inc("fengqiao_events_total", {"kind": "alarm"})
    server = MetricsServer(m, "127.0.0.1", 0).start()
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % server.port, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'fengqiao_events_total{kind="alarm"} 1' in r.read().decode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen("http://127.0.0.1:%d/other" % server.port, timeout=5)
    finally:
        server.stop()


def test_json_logs_and_rate_limit():
    out = io.StringIO()
    logger = setup_logging("info", "json", stream=out)
    t = [0.0]
    limited = RateLimitedLog(logging.getLogger("fengqiao.test"), per_key_per_min=3, clock=lambda: t[0])
    results = [limited.warning("uplink rejected", "BadMac", {"device": "0000002a"}) for _ in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert limited.warning("uplink rejected", "Replay")  # other reasons have their own budget
    t[0] = 61.0
    assert limited.warning("uplink rejected", "BadMac")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["msg"] == "uplink rejected" and lines[0]["key"] == "BadMac" and lines[0]["device"] == "0000002a"
    assert lines[0]["level"] == "warning" and lines[0]["logger"] == "fengqiao.test" and lines[0]["ts"].endswith("Z")
    assert {"msg": "suppressed similar messages", "key": "BadMac", "suppressed": 7}.items() <= lines[4].items()
    assert len(lines) == 6
    logger.handlers[:] = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
