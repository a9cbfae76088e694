"""The gateway's MQTT edge: receive uplinks, verify in batches, commit, then acknowledge.

    svc = GatewayService(store, registry, clock, MqttSettings(host, port, username, password))
    svc.add_event_handler(fn)        # fn(event, ctx) after commit, in the handler thread
    svc.add_timer(fn, interval_s)    # fn(ctx) every interval_s, in the timer thread
    svc.set_stage_lookup(fn)         # fn(stored_event) -> current ack stage for a resent uplink
    svc.start(); svc.wait_connected(10); ...; svc.stop()

Threads and the order that makes "acknowledged" mean "stored":

    MQTT thread       the only user of the paho client: read ahead (on_message: throttle check,
                      queue), then ONE batch of up to max_batch frames: gateway.pipeline.process_batch
                      -> ONE store transaction (fsync) -> device `ack` frames (stage 0, or the
                      current stage for a duplicate) -> MQTT PUBACKs (paho manual_ack) ->
                      supervision -> hand the events to the handler thread; then read again.
                      The downlinks other threads queued (ctx.send_ack / send_downlink: the
                      sirens of an alarm) go out between pieces of a batch's work: every 64
                      verified frames, before the commit, before each ack the thread sends,
                      after the batch
    handler thread    event handlers (cases, ...): their exceptions are logged and counted
    timer thread      periodic functions (supervision, escalation deadlines, patrols)

The gateway's MQTT session is persistent (clean_session=False; the broker binds the client id to
the username `gateway`, so no other login can take it over) and PUBACKs are sent only after the
commit, so a crash at any instant leaves every uncommitted uplink queued in
Mosquitto for redelivery, and a redelivered uplink that was committed is recognised as a
duplicate (re-acknowledged, not stored twice). A PUBACK is only sent on the connection the
message arrived on (message ids restart per connection). The gateway subscribes when the broker
has no session for it (session_present=False: the first start, or a broker that lost its state,
e.g. killed between two autosaves; that one is logged and counted as
fengqiao_broker_session_lost_total), and is "connected" only once the SUBACK is back. With a
session present the subscription is still there: the backlog flows without a new SUBSCRIBE.

If the store cannot be written, the batch is retried with back-off and nothing is acknowledged.
Rejected frames are PUBACKed to the broker (so they are not redelivered) but never get a device
ack; they are counted by reason and logged with rate limiting. A device over its rate is dropped
the same way ("Throttled") before any verification work, so it cannot delay the others.

Hostile traffic, cheapest check first, before anything is queued (issue 13): in the read buffer
(_ReadAhead, ~1 us a packet, before paho), every uplink PUBLISH is counted per device for the
flood guard (gateway/quarantine.py, set with set_flood_guard), which names a flooder: it is held
at once here and cut off at the broker by the guard's own thread; and a QoS 0 uplink (SPEC
section 6: uplinks are QoS 1; QoS 0 at full speed is what a flood is made of) is cut out there
("WrongQoS", or "Quarantined" for a held device). Then, on arrival: a retained message (the broker
refuses them; SPEC section 6 has none) is dropped and counted ("Retained"); a message of a
quarantined device is dropped ("Quarantined").

Alarm lane: an uplink whose header says alarm or alarm_cancel marks its device urgent; reading
stops, and the next batch is that device's queued frames (in their order, so per-device order is
kept) before everyone else's, so heartbeats and check-ins never sit in front of an alarm. Reading
runs ahead of processing (up to max_queued frames) so that an alarm is seen once the broker has
sent it, not after everything in front of it in the socket has been stored and acked; and the
sirens its case queues leave within milliseconds, not after the batch in hand. Measured with
`fengqiao bench storm` (5,000 devices x 50 records, 2 shared cores, issue 14): press -> last
siren p50 1.5-1.6 s before, 0.3-0.6 s after; the alarm's siren downlinks had waited 0.4-1.4 s in
self._outbox behind the batches, the alarm itself 0.6-1.4 s in the socket behind ~2,000-5,000 frames.
"""

import collections
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from gateway import pipeline
from gateway.logs import RateLimitedLog
from gateway.metrics import Metrics
from gateway.store import StoreError
from protocol import frame as pframe
from protocol.errors import FrameError

log = logging.getLogger("fengqiao.service")

UPLINK_FILTER = "fq/v1/+/up"
SYS_CLIENTS = "$SYS/broker/clients/connected"
_ALARM_TYPES = (pframe.UP_ALARM, pframe.UP_ALARM_CANCEL)   # byte 1 of an uplink (SPEC section 1)


@dataclass
class MqttSettings:
    host: str
    port: int
    username: str
    password: str
    tls_ca: "str | None" = None
    client_id: str = "fengqiao-gateway"
    keepalive_s: int = 30


def _tls_pending(sock):
    """Bytes already decrypted inside an SSL socket: select() cannot see them."""
    pending = getattr(sock, "pending", None)
    return bool(pending and pending())


# Reads (64 KiB each, ~900 flood messages) in a row that a flood fills with nothing else before
# _ReadAhead.recv gives the MQTT thread back its loop: ~1 MB, ~15 ms of cutting at most.
MAX_EMPTIED_READS = 16


class _ReadAhead:
    """The gateway's socket to the broker, read 64 KiB at a time (issue 13).

    paho reads each packet with two or three recv() calls (type byte, length, body): three system
    calls per uplink, most of what reading one costs once a flood is dropped on arrival. Here one
    recv() serves hundreds of packets. Everything else goes to the socket itself. pending() counts
    what is buffered, so paho's loop and our select() do not wait while packets are here (as for
    the bytes an SSL socket holds)."""

    def __init__(self, sock, held=frozenset(), on_dropped=None, on_counts=None, size=65536):
        self._sock = sock
        self._size = size
        self._buf = b""
        self._pos = 0
        self._tail = b""            # the start of a packet not yet whole
        self._held = held           # uplink topics (bytes) of quarantined devices
        self._on_dropped = on_dropped
        self._on_counts = on_counts
        self._cut = 0               # packets cut out of the last read

    def recv(self, n):
        emptied = 0
        while self._pos >= len(self._buf):
            data = self._sock.recv(self._size)     # BlockingIOError / SSLWantReadError as before
            if not data:
                return data                         # end of stream: paho sees the connection closed
            if self._tail:
                data, self._tail = self._tail + data, b""
            # always framed, held topics or not: a buffer passed on whole may end inside a packet,
            # and the next one must be cut at packet boundaries
            self._buf, self._pos = self._filter(data)
            if self._cut and not self._buf:
                emptied += 1
                if emptied >= MAX_EMPTIED_READS:
                    # a flood that fills read after read: back to the MQTT thread's loop (its
                    # batches, the sirens other threads queued) as if nothing had come; its
                    # select() sees the socket still readable
                    raise BlockingIOError("%d reads held nothing but QoS 0 uplinks" % emptied)
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def _filter(self, data):
        """(what paho gets, 0), at ~1 us a packet instead of paho's ~14 us (issue 13):

        - every whole PUBLISH packet on a topic that is not held is counted, per topic, and the
          counts go to on_counts({topic: n}) once per read: the flood guard judges from them. Ten
          flooders on a shared 2-core machine left the gateway's thread so little CPU that, read
          through paho, each one reached it at ~240 msg/s, under the guard's limit: 9 of 10 were
          never named in 8 s, and an alarm waited behind their messages (measured 2026-12-07);
        - QoS 0 PUBLISH packets on a device's topic are cut out: SPEC section 6 has uplinks at
          QoS 1 only (our subscription is QoS 1, so a QoS 0 one was sent at QoS 0), so one is never
          a device doing its job, and QoS 0 at full speed is what a flood is made of. Held
          topics' ones count as "Quarantined", the others as "WrongQoS": on_dropped(held, other).
          `$SYS` figures (our QoS 0 subscription) and every QoS 1/2 PUBLISH go on to paho (they
          need a PUBACK; _receive drops a held device's)."""
        held, n, i, start, parts = self._held, len(data), 0, 0, []
        counts = {}
        dropped_held = dropped_other = 0
        while i + 2 <= n:
            j, length, shift = i + 1, 0, 0
            while j < n and data[j] & 0x80 and shift < 21:
                length |= (data[j] & 0x7F) << shift
                j, shift = j + 1, shift + 7
            if j >= n:
                break
            length |= (data[j] & 0x7F) << shift
            end = j + 1 + length
            if end > n:
                break
            if data[i] & 0xF0 == 0x30 and length >= 2:     # PUBLISH (dup/retain ignored)
                tl = data[j + 1] << 8 | data[j + 2]
                topic = data[j + 3:j + 3 + tl]
                if topic[:1] != b"$":
                    is_held = topic in held
                    if not is_held:
                        counts[topic] = counts.get(topic, 0) + 1
                    if not data[i] & 0x06:                  # QoS 0
                        if start < i:
                            parts.append(data[start:i])
                        start = end
                        if is_held:
                            dropped_held += 1
                        else:
                            dropped_other += 1
            i = end
        if start:
            parts.append(data[start:i])
            kept = b"".join(parts)
        else:
            kept = data[:i]
        self._tail = data[i:]
        if counts and self._on_counts is not None:
            self._on_counts(counts)
        self._cut = dropped_held + dropped_other
        if self._cut and self._on_dropped is not None:
            self._on_dropped(dropped_held, dropped_other)
        return kept, 0

    def pending(self):
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner else 0)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    read_filter = (frozenset(), None, None)   # (held topics as bytes, on_dropped, on_counts): GatewayService

    def _create_socket(self):
        # paho 2.x (requirements.txt pins 2.2.0): the socket it has just connected (and wrapped
        # in TLS when configured), before it sets it non-blocking and sends CONNECT.
        return _ReadAhead(super()._create_socket(), *self.read_filter)

    def loop(self, timeout=1.0):
        # paho's loop() first creates a socket pair to wake its own select(), and from then on
        # every packet queued (each ack, each PUBACK) also writes a byte to it: two extra system
        # calls per uplink, and once the pair is full, two BlockingIOErrors. The MQTT thread is
        # the only caller and has its own wake socket (GatewayService._wake): no pair here.
        return self._loop(timeout)


class GatewayContext:
    """What handlers and timers get: the clock, the store, the registry, and ways to act."""

    def __init__(self, service):
        self._svc = service
        self.clock = service.clock
        self.store = service.store
        self.registry = service.registry
        self.metrics = service.metrics

    def send_downlink(self, device_id, msg_type, body):
        """Build, MAC (current key) and publish a downlink at QoS 1; returns its downlink seq."""
        dev = self.registry.device(device_id)
        if dev is None or dev.status != "active":
            raise ValueError("no active device %08x" % device_id)
        return self._svc._publish_downlink(msg_type, device_id, dev.key_id, body)

    def send_ack(self, device_id, acked_seq, stage, key_id=None):
        """An `ack` of uplink `acked_seq` at `stage` (SPEC section 3: 0 stored .. 4 cancelled)."""
        if key_id is None:
            key_id = self.registry.device(device_id).key_id
        now = int(self.clock.now())
        # the same second in the header `time` as in the body's gateway_time (SPEC section 4): a
        # second reading of the clock could cross a second boundary and differ by one
        return self._svc._publish_downlink(pipeline.DOWN_ACK, device_id, key_id, [acked_seq, stage, now], now)

    def emit(self, kind, body, device_id=None, place_id=None, actor="system"):
        """Store a gateway event (handlers see it too) and return the StoredEvent."""
        return self.store.append_gateway_event(kind, body, device_id=device_id, place_id=place_id, actor=actor)


class GatewayService:
    def __init__(self, store, registry, clock, mqtt_settings, metrics=None, max_batch=2000,
                 device_rate_per_s=20.0, device_burst=100, log_per_reason_per_min=10, backlog_grace_s=30.0):
        self.store = store
        self.registry = registry
        self.clock = clock
        self.settings = mqtt_settings
        self.metrics = metrics or Metrics()
        self.max_batch = max_batch
        # frames read ahead of the batches at most (the broker holds the rest: nothing is PUBACKed
        # before it is stored, so this bounds memory, ~0.5 KB a frame)
        self.max_queued = max(10 * max_batch, 1000)
        self.backlog_grace_s = backlog_grace_s
        self.ctx = GatewayContext(self)
        self.signer = pipeline.DownlinkSigner(registry.device_key)
        self.seqs = pipeline.SeqState(store.seq_windows())   # anti-replay windows (SPEC section 4)
        self.buckets = pipeline.TokenBuckets(device_rate_per_s, device_burst)
        self.rejection_log = RateLimitedLog(log, log_per_reason_per_min)
        self._handlers = []
        self._timers = []
        self._observers = []        # fn(outcomes) in the pipeline thread after acks (supervision)
        self._stage_lookup = None
        self._incoming = collections.deque()
        self._outbox = collections.deque()  # (topic, frame) downlinks from handler/timer threads
        self._wake_r, self._wake_w = socket.socketpair()   # wakes the MQTT thread for the outbox
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._handler_q = collections.deque()
        self._handler_wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._throttle_from = 0.0
        self._held = set()          # uplink topics of quarantined devices: dropped on arrival
        self._held_b = set()        # the same, as bytes: QoS 0 ones are cut out of the read buffer
        self._urgent = set()        # uplink topics with an alarm in self._incoming
        self._flood = None          # (detector, on_flood) from set_flood_guard
        self._connects = 0
        self._gen = 0               # connection generation: PUBACK only on the arrival connection
        self._downlink_lock = threading.Lock()
        self._threads = []
        self._io_thread = None
        self.processed = 0
        self._client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=mqtt_settings.client_id,
                                   clean_session=False, manual_ack=True)
        self._client.username_pw_set(mqtt_settings.username, mqtt_settings.password)
        if mqtt_settings.tls_ca:
            self._client.tls_set(ca_certs=mqtt_settings.tls_ca)
        # 0 = no limit on our QoS 1 acks in flight: with a limit, paho 2.2 walks every queued
        # message on each PUBACK (_update_inflight), quadratic under load.
        self._client.max_inflight_messages_set(0)
        self._client.read_filter = (self._held_b, self._dropped_on_read, self._counted_on_read)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._rx = 0                # packets handled by paho (read-loop progress)
        store.subscribe(self._on_store_commit)
        self.metrics.gauge_fn("fengqiao_incoming_queue_depth", lambda: len(self._incoming))

    # -- hooks -------------------------------------------------------------------------------------

    def add_event_handler(self, fn):
        """fn(event: StoredEvent, ctx) for every committed event (device and gateway), in order of
        commit per source; runs in the handler thread, so a slow handler never delays acks."""
        self._handlers.append(fn)

    def add_timer(self, fn, interval_s):
        self._timers.append([fn, float(interval_s), time.monotonic() + float(interval_s)])

    def add_observer(self, fn):
        """fn(outcomes) in the pipeline thread after each batch is acknowledged (keep it cheap)."""
        self._observers.append(fn)

    def set_flood_guard(self, detector, on_flood):
        """detector.note(topic, now, in_grace, n) -> None or msgs/s, for the n uplink messages of a
        topic in one read of the socket (keep it cheap: the MQTT thread); on a figure the device is
        held here and on_flood(device_id, rate) is called in the MQTT thread (it must only hand
        the work to another thread)."""
        self._flood = (detector, on_flood)

    def hold(self, device_id):
        """Drop every message of this device on arrival (quarantine), until release()."""
        self._hold_topic(pframe.uplink_topic(device_id))

    def _hold_topic(self, topic):
        self._held.add(topic)
        self._held_b.add(topic.encode())

    def _dropped_on_read(self, held, other):
        """QoS 0 uplinks cut out of the read buffer (_ReadAhead._filter): a held device's, others.
        Not read-loop progress (self._rx): a pass of reads that only cut a flood out ends, and the
        thread's batches and queued downlinks (sirens) come next, not after max_batch such reads."""
        if held:
            self.metrics.inc("fengqiao_rejections_total", {"reason": "Quarantined"}, held)
        if other:
            self.metrics.inc("fengqiao_rejections_total", {"reason": "WrongQoS"}, other)

    def _counted_on_read(self, counts):
        """{topic (bytes): n} of the uplink PUBLISHes of one read, held topics left out: the flood
        guard's input. A device it names is held here at once (its next messages are cut out of
        the read buffer, or dropped on arrival) and handed to the guard's thread (on_flood)."""
        if self._flood is None:
            return
        detector, on_flood = self._flood
        now = time.monotonic()
        in_grace = now <= self._throttle_from
        for topic_b, n in counts.items():
            topic = topic_b.decode("utf-8", "replace")     # the broker passes only valid UTF-8
            rate = detector.note(topic, now, in_grace, n)
            if rate is None:
                continue
            self._hold_topic(topic)
            try:
                on_flood(int(topic.split("/")[2], 16), rate)
            except (ValueError, IndexError):   # not a device topic (the ACL allows none such): held anyway
                pass

    def release(self, device_id):
        topic = pframe.uplink_topic(device_id)
        self._held_b.discard(topic.encode())
        self._held.discard(topic)
        if self._flood is not None:
            self._flood[0].forget(topic)     # judged afresh from its next message

    def held(self):
        return {int(t.split("/")[2], 16) for t in self._held}

    def set_stage_lookup(self, fn):
        """fn(stored_event) -> int: the stage to re-acknowledge a resent uplink with (default 0)."""
        self._stage_lookup = fn

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self):
        for name, target in (("mqtt", self._io_loop), ("handlers", self._handler_loop), ("timers", self._timer_loop)):
            t = threading.Thread(target=target, name="fengqiao-" + name, daemon=True)
            self._threads.append(t)
        self._io_thread = self._threads[0]
        for t in self._threads:
            t.start()
        return self

    def wait_connected(self, timeout_s=10):
        if not self._connected.wait(timeout_s):
            raise TimeoutError("gateway did not connect to the broker at %s:%d" % (self.settings.host, self.settings.port))

    @property
    def connected(self):
        return self._connected.is_set()

    def stop(self):
        """Finish the batch in hand, then disconnect (unacknowledged messages stay at the broker)."""
        self._stopping.set()
        self._handler_wake.set()
        self._wake()
        for t in self._threads:
            t.join(10)
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):  # already pending, or closed at shutdown
            pass

    # -- MQTT callbacks (paho network thread) --------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the gateway", extra={"fields": {"reason": str(reason_code)}})
            return
        self._gen += 1
        self._connects += 1
        present = bool(flags.session_present)
        # The backlog Mosquitto kept for us while we were away (hours of heartbeats from one
        # device) is not a flood: no throttling while it drains. (The flood guard still watches:
        # past what the broker could have queued for us, a device is flooding, grace or not.)
        self._throttle_from = time.monotonic() + self.backlog_grace_s
        if self._flood is not None:
            self._flood[0].connected(present)
        if present:
            self._connected.set()
            log.info("connected to broker", extra={"fields": {"session_present": True}})
            return
        if self._connects > 1:
            self.metrics.inc("fengqiao_broker_session_lost_total")
            log.warning("the broker has no session for the gateway (it lost its state); subscribing again",
                        extra={"fields": {"session_present": False}})
        else:
            log.info("connected to broker; subscribing (no session at the broker: first start, or it lost its state)",
                     extra={"fields": {"session_present": False}})
        client.subscribe([(UPLINK_FILTER, 1), (SYS_CLIENTS, 0)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("broker refused the gateway's subscription", extra={"fields": {"reasons": bad}})
            return
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected.clear()
        if not self._stopping.is_set():
            log.warning("disconnected from broker; reconnecting", extra={"fields": {"reason": str(reason_code)}})

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self._rx += 1  # a PUBACK for one of our downlinks: the read loop made progress

    def _on_message(self, client, userdata, msg):
        self._rx += 1
        try:
            self._receive(client, msg)
        except Exception:  # paho would re-raise and stop its network thread: never let it
            self.metrics.inc("fengqiao_rejections_total", {"reason": "InternalError"})
            log.exception("receiving a message failed")
            if msg.qos:
                client.ack(msg.mid, msg.qos)

    def _drop(self, client, msg, reason):
        self.metrics.inc("fengqiao_rejections_total", {"reason": reason})
        self.rejection_log.warning("uplink rejected", reason, {"topic": msg.topic})
        if msg.qos:
            client.ack(msg.mid, msg.qos)

    def _receive(self, client, msg):
        topic = msg.topic
        if topic in self._held:
            return self._drop(client, msg, "Quarantined")
        if msg.retain and topic[0] != "$":     # ($SYS figures are retained by the broker itself)
            return self._drop(client, msg, "Retained")
        if topic[0] == "$":
            try:
                self.metrics.set("fengqiao_broker_clients_connected", int(msg.payload))
            except ValueError:
                pass
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            return
        now = time.monotonic()
        in_grace = now <= self._throttle_from
        # (the flood guard has counted this message already, as it was read: _counted_on_read)
        if not in_grace and not self.buckets.allow(topic, now):
            return self._drop(client, msg, "Throttled")
        payload = msg.payload
        try:
            # SPEC section 2 step 1 (length, version, direction, type), as the pipeline would do it
            # first, with the same reason: what is not even a frame never joins the queue. A junk
            # flood in the backlog grace (no throttling) cost the pipeline's full round per message
            # and slowed the read of everyone's messages, the flooders' detection too (issue 13).
            pframe.peek(payload, False)
        except FrameError as exc:
            return self._drop(client, msg, type(exc).__name__)
        if len(payload) > 1 and payload[1] in _ALARM_TYPES:
            self._urgent.add(topic)
        self._incoming.append(pipeline.Incoming(topic, payload, msg.mid, msg.qos, now))

    # -- pipeline thread -------------------------------------------------------------------------------

    def _io_loop(self):
        """The only thread that touches the paho client: network I/O, then verify/store/ack.

        One thread rather than paho's loop_start() thread plus a pipeline thread: two busy Python
        threads hand the GIL to each other at every system call, which on a loaded 2-core
        machine cost more than the work itself. Reads run ahead (up to max_queued frames), then
        one batch is processed, then reads again; downlinks from other threads arrive through
        self._outbox and are sent between pieces of each batch (_send_queued)."""
        client, s = self._client, self.settings
        dq, outbox = self._incoming, self._outbox
        client.connect_async(s.host, s.port, s.keepalive_s)
        delay = 0.1
        while not self._stopping.is_set():
            if client.socket() is None:
                try:
                    client.reconnect()
                    delay = 0.1
                except (OSError, ValueError) as exc:  # refused, unreachable, TLS failure, timeout
                    self.rejection_log.warning("cannot connect to the broker; retrying", "connect",
                                               {"error": str(exc), "retry_s": delay})
                    self._stopping.wait(delay)
                    delay = min(delay * 2, 5.0)
                    continue
            if not (dq or outbox):  # idle: sleep until the broker or another thread has something
                sock = client.socket()
                if sock is not None and not _tls_pending(sock):
                    try:
                        select.select([sock, self._wake_r], [sock] if client.want_write() else [], [], 1.0)
                    except (OSError, ValueError):  # the socket closed under us: loop() reports it
                        pass
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    pass
            rc = client.loop(0)
            # Read what has arrived while each read makes progress. Progress, not select(): a TLS
            # socket can hold whole records that select() and pending() miss. Reading is cheap next
            # to verify/store/ack, so it runs ahead of the batches (up to max_queued queued frames):
            # an alarm is seen as soon as the broker has sent it, not once everything in front of
            # it in the socket has been processed (storm: ~1 s behind 2,000-5,000 frames, issue 14).
            # At most max_batch reads per pass, queued or not: messages dropped on arrival (a
            # flood) never fill the queue, and reading on while they keep coming held the other
            # threads' downlinks (the neighbours' sirens) in self._outbox for seconds (issue 13).
            reads = 0
            while (rc == mqtt.MQTT_ERR_SUCCESS and client.socket() is not None and len(dq) < self.max_queued
                   and not self._urgent and reads < self.max_batch):
                before = self._rx
                rc = client.loop_read()
                if self._rx == before:
                    break
                reads += 1
            # One batch, then read again: an alarm that arrived meanwhile is next (alarm lane).
            if dq and not self._stopping.is_set():
                gen = self._gen
                if self._urgent:
                    batch = self._take_urgent()
                else:
                    batch = []
                    try:
                        while len(batch) < self.max_batch:
                            batch.append(dq.popleft())
                    except IndexError:
                        pass
                self.process(batch, gen)
            if outbox:
                with self._downlink_lock:
                    self._flush_outbox()
        while outbox:
            topic, data = outbox.popleft()
            client.publish(topic, data, qos=1)
        if client.socket() is not None:
            client.loop_write()
            client.disconnect()

    def _take_urgent(self):
        """The queued frames of the devices with an alarm waiting, in their order; the rest stay."""
        urgent, self._urgent = self._urgent, set()
        dq = self._incoming
        batch, rest = [], []
        for inc in dq:
            (batch if inc.topic in urgent else rest).append(inc)
        dq.clear()
        dq.extend(rest)
        return batch

    def _place_of(self, device_id):
        dev = self.registry.device(device_id)
        return dev.place_id if dev else None

    def _find_stored(self, device_id, key_id, seq):
        return self.store.find_device_event(device_id, key_id, seq) is not None

    def process(self, batch, gen):
        """Verify, store (one transaction), acknowledge; returns the outcomes (for tests/bench)."""
        if self.registry.refresh_if_changed():
            self.signer.forget()
        delay = 0.05
        while True:
            outs = pipeline.process_batch(batch, self.registry.device_key, self._place_of, self.seqs,
                                          self._find_stored, self.clock.now(), every=self._send_queued)
            new = [o.new for o in outs if o.status == pipeline.NEW]
            self._send_queued()     # before the commit's fsync
            try:
                stored = self.store.append_device_events(new)
                break
            except StoreError as exc:
                log.error("store write failed; nothing acknowledged, retrying",
                          extra={"fields": {"error": str(exc), "batch": len(batch)}})
                self.metrics.inc("fengqiao_store_errors_total")
                self.seqs.reload(self.store.seq_windows())
                if self._stopping.wait(delay):
                    return []
                delay = min(delay * 2, 5.0)
        self._acknowledge(outs, stored, gen)
        return outs

    def _acknowledge(self, outs, stored, gen):
        client = self._client
        metrics = self.metrics
        now_i = int(self.clock.now())
        it = iter(stored)
        kinds = collections.Counter()
        latencies = []
        skews = []
        gaps = dups = 0
        same_conn = gen == self._gen
        for o in outs:
            inc = o.incoming
            if o.status == pipeline.REJECTED:
                metrics.inc("fengqiao_rejections_total", {"reason": o.reason})
                self.rejection_log.warning("uplink rejected", o.reason, {
                    "topic": inc.topic, "device": "%08x" % o.device_id if o.device_id else None,
                    "seq": o.seq, "detail": o.detail})
            else:
                if o.status == pipeline.NEW:
                    o.stored = next(it)
                    stage = 0
                    kinds[o.kind] += 1
                    gaps += o.gap
                else:
                    dups += 1
                    stage = 0
                    if self._stage_lookup is not None:
                        ev = self.store.find_device_event(o.device_id, o.key_id, o.seq)
                        try:
                            stage = int(self._stage_lookup(ev)) if ev else 0
                        except Exception:
                            metrics.inc("fengqiao_handler_errors_total", {"handler": "stage_lookup"})
                            log.exception("stage lookup failed")
                try:
                    self._publish_downlink(pipeline.DOWN_ACK, o.device_id, o.key_id, [o.seq, stage, now_i], now_i)
                except Exception:  # e.g. device revoked between verify and ack: the uplink is stored
                    metrics.inc("fengqiao_ack_errors_total")
                    log.exception("could not send ack")
                if o.skew_s is not None:
                    skews.append(abs(o.skew_s))
            if inc.qos and same_conn:
                client.ack(inc.mid, inc.qos)
            if o.status != pipeline.REJECTED:
                latencies.append(time.monotonic() - inc.received_mono)
        if log.isEnabledFor(logging.DEBUG):  # `[log] level = "debug"`: follow each frame (demo)
            for o in outs:
                if o.status != pipeline.REJECTED:
                    ev = o.stored
                    log.debug("uplink %s" % ("verified, stored, acked" if ev else "duplicate, re-acked"), extra={"fields": {
                        "device": "%08x" % o.device_id, "kind": o.kind, "seq": o.seq, "event_id": ev and ev.event_id,
                        "hash": ev and ev.hash.hex()[:16], "frame": o.incoming.payload.hex(), "skew_s": o.skew_s}})
        for kind, n in kinds.items():
            metrics.inc("fengqiao_events_total", {"kind": kind}, n)
        if dups:
            metrics.inc("fengqiao_duplicates_total", None, dups)
        if gaps:
            metrics.inc("fengqiao_seq_gaps_total", None, gaps)
        metrics.observe_many("fengqiao_verify_to_ack_seconds", latencies)
        metrics.observe_many("fengqiao_clock_skew_seconds", skews)
        metrics.observe("fengqiao_batch_size", len(outs))
        self.processed += len(outs)
        for fn in self._observers:
            try:
                fn(outs)
            except Exception:
                metrics.inc("fengqiao_handler_errors_total", {"handler": getattr(fn, "__qualname__", "observer")})
                log.exception("observer failed")
        if stored and self._handlers:
            self._handler_q.extend(stored)
            self._handler_wake.set()

    def _publish_downlink(self, msg_type, device_id, key_id, body, now_i=None):
        if now_i is None:
            now_i = int(self.clock.now())
        with self._downlink_lock:
            seq = self.registry.next_downlink_seq(device_id)
            topic, data = self.signer.build(msg_type, device_id, key_id, seq, now_i, body)
            if threading.current_thread() is self._io_thread:
                if self._outbox:    # built earlier (lower seqs): out first, and no later than this
                    self._flush_outbox()
                self._client.publish(topic, data, qos=1)
            else:
                self._outbox.append((topic, data))   # published by the MQTT thread, in order
                self._wake()
        return seq

    def _send_queued(self):
        """In the MQTT thread, between pieces of a batch's work: the downlinks other threads have
        queued (the neighbours' sirens of an alarm stored a moment ago) go out now."""
        if self._outbox and threading.current_thread() is self._io_thread:
            with self._downlink_lock:
                self._flush_outbox()

    def _flush_outbox(self):
        """Publish the downlinks other threads queued, in order (MQTT thread, _downlink_lock held)."""
        outbox, client = self._outbox, self._client
        while outbox:
            topic, data = outbox.popleft()
            client.publish(topic, data, qos=1)

    # -- handlers and timers ---------------------------------------------------------------------------

    def _on_store_commit(self, events):
        # Device events are handed over by the pipeline after their acks; gateway events here.
        if self._handlers:
            gw = [e for e in events if e.source == "gateway"]
            if gw:
                for e in gw:
                    self.metrics.inc("fengqiao_gateway_events_total", {"kind": e.kind})
                self._handler_q.extend(gw)
                self._handler_wake.set()
        else:
            for e in events:
                if e.source == "gateway":
                    self.metrics.inc("fengqiao_gateway_events_total", {"kind": e.kind})

    def _handler_loop(self):
        q = self._handler_q
        while not self._stopping.is_set():
            self._handler_wake.wait(0.2)
            self._handler_wake.clear()
            while q:
                ev = q.popleft()
                for fn in list(self._handlers):
                    try:
                        fn(ev, self.ctx)
                    except Exception:
                        self.metrics.inc("fengqiao_handler_errors_total", {"handler": getattr(fn, "__qualname__", "handler")})
                        log.exception("event handler failed", extra={"fields": {"event_id": ev.event_id}})

    def _timer_loop(self):
        while not self._stopping.wait(0.05):
            now = time.monotonic()
            for t in self._timers:
                if now >= t[2]:
                    t[2] = now + t[1]
                    try:
                        t[0](self.ctx)
                    except Exception:
                        self.metrics.inc("fengqiao_handler_errors_total", {"handler": getattr(t[0], "__qualname__", "timer")})
                        log.exception("timer failed")
