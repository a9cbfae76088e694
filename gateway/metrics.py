"""Gateway metrics in Prometheus text format: written by prometheus_client, served at `GET /metrics`
on uvicorn + Starlette (the duty console's web stack). The API below is the one every part uses.

    m = Metrics()
    m.inc("fengqiao_events_total", {"kind": "alarm"}, 3)      # counters (labels as a dict or None)
    m.set("fengqiao_devices_online", 12)                      # gauges
    m.gauge_fn("fengqiao_forward_queue_depth", fn, help)      # gauge computed at scrape time
    m.observe("fengqiao_verify_to_ack_seconds", 0.004)         # histogram (buckets below)
    server = MetricsServer(m, "127.0.0.1", 9108).start()       # .port; .stop()

Series the gateway core exports: fengqiao_events_total{kind}, fengqiao_rejections_total{reason},
fengqiao_duplicates_total, fengqiao_seq_gaps_total, fengqiao_verify_to_ack_seconds (histogram),
fengqiao_batch_size (histogram), fengqiao_devices_online, fengqiao_devices_offline,
fengqiao_broker_clients_connected (from $SYS), fengqiao_forward_queue_depth (registered by the
forwarder), fengqiao_handler_errors_total, fengqiao_clock_skew_seconds (histogram of |skew|).
"""

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    UnknownMetricFamily)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
SKEW_BUCKETS = (1, 5, 30, 60, 300, 3600, 86400)

HELP = {
    "fengqiao_events_total": ("counter", "Verified uplinks stored, by kind"),
    "fengqiao_rejections_total": ("counter", "Uplinks rejected, by reason (protocol error name)"),
    "fengqiao_duplicates_total": ("counter", "Resent uplinks already stored (re-acknowledged, not stored)"),
    "fengqiao_seq_gaps_total": ("counter", "Sequence numbers skipped by devices (counted, not rejected)"),
    "fengqiao_gateway_events_total": ("counter", "Events made by the gateway, by kind"),
    "fengqiao_handler_errors_total": ("counter", "Exceptions raised by event handlers and timers"),
    "fengqiao_verify_to_ack_seconds": ("histogram", "From MQTT receipt to the device ack being sent"),
    "fengqiao_batch_size": ("histogram", "Frames per store transaction"),
    "fengqiao_clock_skew_seconds": ("histogram", "Absolute device clock skew of verified uplinks"),
    "fengqiao_devices_online": ("gauge", "Active devices heard within their supervision window"),
    "fengqiao_devices_offline": ("gauge", "Active devices reported offline"),
    "fengqiao_broker_clients_connected": ("gauge", "Clients connected to the broker ($SYS)"),
    "fengqiao_forward_queue_depth": ("gauge", "Stored events not yet forwarded upstream"),
    "fengqiao_incoming_queue_depth": ("gauge", "MQTT messages received, not yet verified"),
}


def _labels(labels):
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
                             for k, v in sorted(labels.items()))


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, v):
        self.sum += v
        self.count += 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
                break

    def quantile(self, q):
        """Upper bucket bound holding the q-quantile (coarse; for reports, not for billing)."""
        if not self.count:
            return None
        want, seen = q * self.count, 0
        for b, c in zip(self.buckets, self.counts):
            seen += c
            if seen >= want:
                return b
        return float("inf")


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._counters = {}   # (name, labels tuple) -> value
        self._gauges = {}
        self._gauge_fns = {}
        self._hist = {}

    def inc(self, name, labels=None, n=1):
        key = (name, tuple(sorted(labels.items())) if labels else ())
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + n

    def counter(self, name, labels=None):
        key = (name, tuple(sorted(labels.items())) if labels else ())
        return self._counters.get(key, 0)

    def set(self, name, value, labels=None):
        with self._lock:
            self._gauges[(name, tuple(sorted(labels.items())) if labels else ())] = value

    def gauge_fn(self, name, fn, help_text=None):
        if help_text and name not in HELP:
            HELP[name] = ("gauge", help_text)
        self._gauge_fns[name] = fn

    def histogram(self, name):
        with self._lock:
            h = self._hist.get(name)
            if h is None:
                buckets = {"fengqiao_batch_size": SIZE_BUCKETS, "fengqiao_clock_skew_seconds": SKEW_BUCKETS}
                h = self._hist[name] = Histogram(buckets.get(name, LATENCY_BUCKETS))
            return h

    def observe(self, name, value):
        h = self.histogram(name)
        with self._lock:
            h.observe(value)

    def observe_many(self, name, values):
        h = self.histogram(name)
        with self._lock:
            for v in values:
                h.observe(v)

    def render(self):
        """The Prometheus text format (0.0.4), written by prometheus_client from our series."""
        collector = _Collector(self)
        reg = CollectorRegistry(auto_describe=False)
        reg.register(collector)
        text = generate_latest(reg).decode()
        return text + "".join(line + "\n" for line in collector.problems)

    def snapshot(self):
        """(counters, gauges, histograms, problems) as plain values, consistent under the lock."""
        gauges, problems = {}, []
        for name, fn in list(self._gauge_fns.items()):
            try:
                gauges[(name, ())] = fn()
            except Exception as exc:  # a scrape must not fail because one source is down
                problems.append("# %s unavailable: %s" % (name, type(exc).__name__))
        with self._lock:
            counters = dict(self._counters)
            gauges.update(self._gauges)
            hists = {k: (h.buckets, list(h.counts), h.sum, h.count) for k, h in self._hist.items()}
        return counters, gauges, hists, problems


class _Collector:
    """Our series as prometheus_client metric families (names, types and labels as before)."""

    def __init__(self, metrics):
        self.metrics = metrics
        self.problems = []

    def collect(self):
        counters, gauges, hists, self.problems = self.metrics.snapshot()
        families = {}

        def family(name, kind):
            typ, text = HELP.get(name, (kind, name))
            fam = families.get(name)
            if fam is None:
                cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}.get(typ, UnknownMetricFamily)
                fam = families[name] = (cls, text, [])
            return fam

        for (name, labels), v in sorted(counters.items()):
            family(name, "untyped")[2].append((labels, v))
        for (name, labels), v in sorted(gauges.items()):
            if v is not None:
                family(name, "gauge")[2].append((labels, v))
        for name, (cls, text, samples) in families.items():
            label_names = sorted({k for labels, _ in samples for k, _ in labels})
            fam = cls(name, text, labels=label_names)
            for labels, v in samples:
                d = dict(labels)
                fam.add_metric([str(d.get(k, "")) for k in label_names], v)
            yield fam
        for name, (buckets, counts, total, count) in sorted(hists.items()):
            acc, cumulative = 0, []
            for b, c in zip(buckets, counts):
                acc += c
                cumulative.append((str(b), acc))
            cumulative.append(("+Inf", count))
            fam = HistogramMetricFamily(name, HELP.get(name, ("histogram", name))[1])
            fam.add_metric([], cumulative, total)
            yield fam


class MetricsServer:
    """GET /metrics on uvicorn + Starlette (the duty console's web stack), in a thread.

    Kept separate from the console: it may listen where the Prometheus scraper reaches it and
    it needs no login. The console also serves the same text at its own /metrics."""

    def __init__(self, metrics, host="127.0.0.1", port=9108):
        from gateway.console.server import WebServer

        self.metrics = metrics
        self._web = WebServer(metrics_app(metrics), host, port, name="metrics")
        self.port = port

    def start(self):
        self._web.start()
        self.port = self._web.port
        return self

    def stop(self):
        self._web.stop()


def metrics_app(metrics):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route

    async def scrape(request):
        body = await run_in_threadpool(metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", scrape)])
