"""Forward every stored event, signed, to the county broker: in order, at QoS 1, resumable.

    up = Upstream(store, signing_key, "township-1", host, port, "fq/v1/county/township-1")
    up.start()            # a thread; returns at once
    up.stats()            # forwarded, queue_depth, connected, reconnects, ...
    up.wait_forwarded(event_id, timeout_s)
    up.stop()

The store is the queue. The forwarder reads events after its cursor (the last event the county's
broker acknowledged), wraps each in an envelope (gateway/envelope.py, SPEC section 10), signs the
last envelope of each batch, and publishes the batch as ONE MQTT message (envelopes separated by
"\\n") at QoS 1, with at most `window` messages unacknowledged. A PUBACK moves the cursor, which is
persisted in this gateway's SQLite file (table `upstream_cursor`). Under light load a batch is one
event; under heavy load up to `batch_max`, so one signature and one PUBACK cover many events.

Failure modes, and what happens:
- County broker down or unreachable (minutes or hours): connection attempts back off from
  `reconnect_min_s` to `reconnect_max_s`; events keep being stored; nothing is held in memory beyond
  a bounded cache. When it is back, forwarding resumes from the cursor, in order.
- Connection lost with messages in flight: a new MQTT session is opened and everything after the
  cursor is sent again, in order. The county may see an envelope twice (it was delivered but its
  PUBACK was lost): envelope ids (`<gateway id>:<event id>`) make that idempotent.
- Gateway killed at any instant: the cursor on disk is at most `cursor_every_s` behind the last
  PUBACK (written with synchronous=NORMAL in WAL: a power cut can roll it back further); the
  restarted forwarder re-sends from there. Never a gap, at worst duplicates.
- The county broker refuses the publish (its ACL, a quota): the PUBACK's MQTT 5 reason code says
  so; the cursor does not move, the error is logged and counted (`refused_by_upstream`), and the
  forwarder reconnects with back-off and tries again. Nothing is skipped.
- A store subscriber callback that runs out of order or a cache overflow: the in-memory cache is only
  a shortcut; the forwarder falls back to reading the store.
- The cursor names an event whose hash is not in the store (the database was replaced): logged,
  counted as `chain_errors`, forwarding continues from that event id; `fengqiao verify` at the county
  shows the break.

Plugin: `attach(app)` (the gateway loads `gateway.upstream` by default) reads the `[upstream]` table,
creates/loads the signing key, registers the forward-queue gauge and starts the forwarder:

    [upstream]
    gateway_id = "township-1"              # prefixes envelope ids; no ':'
    host = "county.example.cn"             # the county broker
    port = 8883
    topic = "fq/v1/county/township-1"
    cafile = "county-ca.pem"               # optional: TLS to the county broker
    username = "township-1"                # optional
    password = "..."                       # optional
    key_file = "upstream_signing_key.pem"  # Ed25519 key, created with mode 0600 on first run
    batch_max = 50                         # envelopes per MQTT message (one signature each)
    window = 4                             # MQTT messages in flight
    keepalive_s = 15
    reconnect_min_s = 0.2                  # back-off while the county is unreachable: doubles from
    reconnect_max_s = 30.0                 # min up to this cap (the longest wait after it is back)
    name = "county"                        # cursor name (a second upstream would use another)
"""

import collections
import json
import logging
import os
import select
import socket
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt

from gateway import envelope
from gateway.events import ZERO_HASH
from gateway.store import to_us

log = logging.getLogger("fengqiao.upstream")

_CURSOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS upstream_cursor (
    name TEXT PRIMARY KEY,          -- which upstream (default "county")
    event_id INTEGER NOT NULL,      -- last event acknowledged by the upstream broker
    hash BLOB NOT NULL,             -- its chain hash (detects a replaced event store)
    updated_at_us INTEGER NOT NULL
);
"""

CACHE_MAX = 20_000


class UpstreamError(RuntimeError):
    """The forwarder cannot be set up (bad configuration)."""


class Upstream:
    def __init__(self, store, signing_key, gateway_id, host, port, topic, *, clock=None, name="county",
                 username=None, password=None, cafile=None, client_id=None, batch_max=50, window=4,
                 keepalive_s=15, reconnect_min_s=0.2, reconnect_max_s=30.0, cursor_every_s=0.5,
                 connect_timeout_s=5.0):
        if not gateway_id or ":" in gateway_id:
            raise UpstreamError("gateway id must be non-empty text without ':' (it prefixes envelope ids)")
        if not topic or "+" in topic or "#" in topic:
            raise UpstreamError("upstream topic must be a plain topic, got %r" % (topic,))
        self.store = store
        self.key = signing_key
        self.gateway_id = gateway_id
        self.host, self.port, self.topic = host, int(port), topic
        self.clock = clock or store.clock
        self.name = name
        self.username, self.password, self.cafile = username, password, cafile
        self.client_id = client_id or "fq-%s-upstream" % gateway_id
        self.batch_max = int(batch_max)
        self.window = int(window)
        self.keepalive_s = keepalive_s
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.cursor_every_s = cursor_every_s
        self.connect_timeout_s = connect_timeout_s

        self.counters = collections.Counter()
        self.last_error = None
        self._closed = False
        self._db = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_CURSOR_SCHEMA)
        self._acked = self._load_cursor()           # (event_id, hash) acknowledged upstream
        self._persisted = self._acked[0]
        self._last_persist = time.monotonic()
        self._sent = self._acked                    # (event_id, hash) published in this session
        self._inflight = collections.deque()        # [mid, last event_id, last hash, n events, acked]

        self._lock = threading.Lock()
        self._acked_cond = threading.Condition(self._lock)
        self._cache = collections.deque()           # recent StoredEvents, contiguous ids
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._stopping = threading.Event()
        self._thread = None
        self._client = None
        self._connected = False
        self._session = False
        self._refused = False
        store.subscribe(self._on_commit)

    @classmethod
    def from_config(cls, section, store, signing_key, gateway_id, clock=None):
        """Build from the `[upstream]` TOML table (a dict)."""
        known = {"host", "port", "topic", "username", "password", "cafile", "key_file", "batch_max", "window",
                 "keepalive_s", "name", "client_id", "gateway_id", "reconnect_min_s", "reconnect_max_s"}
        unknown = set(section) - known
        if unknown:
            raise UpstreamError("unknown [upstream] setting(s): %s" % ", ".join(sorted(unknown)))
        for required in ("host", "port", "topic"):
            if required not in section:
                raise UpstreamError("[upstream] needs %r" % required)
        kwargs = {k: section[k] for k in ("username", "password", "cafile", "batch_max", "window",
                                          "keepalive_s", "name", "client_id") if k in section}
        for k in ("reconnect_min_s", "reconnect_max_s"):
            if k in section:
                v = section[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 3600:
                    raise UpstreamError("[upstream] %s must be a number of seconds in (0, 3600], not %r" % (k, v))
                kwargs[k] = float(v)
        if kwargs.get("reconnect_min_s", 0.2) > kwargs.get("reconnect_max_s", 30.0):
            raise UpstreamError("[upstream] reconnect_min_s must not be above reconnect_max_s")
        return cls(store, signing_key, gateway_id, section["host"], section["port"], section["topic"],
                   clock=clock, **kwargs)

    # -- cursor ----------------------------------------------------------------------------------

    def _load_cursor(self):
        row = self._db.execute("SELECT event_id, hash FROM upstream_cursor WHERE name = ?", (self.name,)).fetchone()
        if row is None:
            return (0, ZERO_HASH)
        event_id, h = row[0], bytes(row[1])
        if event_id > 0:
            try:
                stored = self.store.get(event_id).hash
            except KeyError:
                stored = None
            if stored != h:
                self.counters["chain_errors"] += 1
                log.error("upstream cursor %r points at event %d whose hash is not the stored one; "
                          "was the event store replaced? continuing after event %d", self.name, event_id, event_id)
        return (event_id, h)

    def _persist_cursor(self):
        event_id, h = self._acked
        if event_id == self._persisted:
            return
        try:
            self._db.execute(
                "INSERT INTO upstream_cursor (name, event_id, hash, updated_at_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET event_id = excluded.event_id, hash = excluded.hash,"
                " updated_at_us = excluded.updated_at_us",
                (self.name, event_id, h, to_us(self.clock.now())))
            self._persisted = event_id
            self._last_persist = time.monotonic()
        except sqlite3.Error as exc:  # the cursor is advisory: a failed write means resending more later
            self.counters["cursor_write_errors"] += 1
            log.warning("upstream cursor not saved (will retry): %s", exc)

    def cursor(self):
        """(event id, hash) of the last event the upstream broker acknowledged."""
        with self._lock:
            return self._acked

    # -- events in -----------------------------------------------------------------------------

    def _on_commit(self, events):
        """Store subscriber (committing thread): remember the new events and wake the forwarder."""
        if not events or self._closed:
            return
        with self._lock:
            cache = self._cache
            if cache and cache[-1].event_id + 1 != events[0].event_id:
                cache.clear()  # out of order notification: the store will be read instead
            if len(cache) + len(events) > CACHE_MAX:
                cache.clear()
            else:
                cache.extend(events)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _next_events(self, after_id, limit):
        with self._lock:
            cache = self._cache
            while cache and cache[0].event_id <= after_id:
                cache.popleft()
            if cache and cache[0].event_id == after_id + 1:
                n = min(limit, len(cache))
                return [cache.popleft() for _ in range(n)]
        if self.store.head()[0] <= after_id:
            return []
        self.counters["store_reads"] += 1
        return self.store.events_after(after_id, limit)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        if self._thread is not None:
            return self
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fq-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s=10):
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._persist_cursor()

    def close(self):
        if self._closed:
            return
        self.stop()
        self._closed = True
        self._db.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def stats(self):
        head = self.store.head()[0]
        with self._lock:
            acked = self._acked[0]
            inflight = len(self._inflight)
        out = dict(self.counters)
        out.update(connected=self._connected, forwarded_through=acked, queue_depth=head - acked,
                   inflight_messages=inflight, persisted_through=self._persisted)
        return out

    def queue_depth(self):
        return self.store.head()[0] - self.cursor()[0]

    def wait_forwarded(self, event_id, timeout_s):
        """Block until the upstream broker acknowledged event_id; True if it did in time."""
        deadline = time.monotonic() + timeout_s
        with self._acked_cond:
            while self._acked[0] < event_id:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acked_cond.wait(left)
        return True

    # -- the forwarder thread ----------------------------------------------------------------------

    def _run(self):
        delay = self.reconnect_min_s
        while not self._stopping.is_set():
            try:
                client = self._connect()
                self._pump(client)
                if not self._refused:  # a healthy session that ended: reconnect soon
                    delay = self.reconnect_min_s
            except (OSError, mqtt.WebsocketConnectionError, ValueError) as exc:
                self.counters["connect_failures"] += 1
                self.last_error = "%s: %s" % (type(exc).__name__, exc)
                log.info("upstream %s:%d not reachable: %s", self.host, self.port, self.last_error)
            except Exception:  # keep forwarding alive through a bug in one batch; it is logged and counted
                self.counters["forwarder_errors"] += 1
                log.exception("upstream forwarder error")
            finally:
                self._drop(self._client)  # also a client whose CONNACK never came
                self._client = None
            if not self._stopping.is_set():
                self._stopping.wait(delay)
                delay = min(delay * 2, self.reconnect_max_s)
        self._persist_cursor()

    def _connect(self):
        # MQTT 5: a broker that refuses a publish (e.g. its ACL) says so in the PUBACK; with 3.1.1
        # Mosquitto would acknowledge and drop it, and the cursor would move past lost events.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        client.connect_timeout = self.connect_timeout_s
        client.max_inflight_messages_set(max(self.window, 1))
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.cafile:
            client.tls_set(ca_certs=self.cafile)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._connack = None
        self._refused = False
        client.connect(self.host, self.port, keepalive=self.keepalive_s, clean_start=True)
        sock = client.socket()
        deadline = time.monotonic() + self.connect_timeout_s
        while self._connack is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.is_set():
                raise TimeoutError("no CONNACK within %.1f s" % self.connect_timeout_s)
            r, _w, _x = select.select([sock], [], [], min(left, 0.2))
            rc = client.loop_read() if r else mqtt.MQTT_ERR_SUCCESS
            if rc != mqtt.MQTT_ERR_SUCCESS and self._connack is None:
                raise ConnectionError("connection closed before CONNACK")
        if self._connack.is_failure:
            raise ConnectionRefusedError("upstream broker refused the connection: %s" % self._connack)
        self._connected = self._session = True
        self.counters["connects"] += 1
        log.info("upstream connected to %s:%d, resuming after event %d", self.host, self.port, self._acked[0])
        return client

    def _drop(self, client):
        was, self._session = self._session, False
        self._connected = False
        if client is not None:
            try:
                client.disconnect()
            except (OSError, ValueError):
                pass
            client._sock_close()  # paho has no public "close without a loop"; avoids an fd leak
        with self._lock:
            self._inflight.clear()
            self._sent = self._acked
            self._cache.clear()
        if was and not self._stopping.is_set():
            self.counters["disconnects"] += 1
            log.warning("upstream connection lost; %d event(s) waiting", self.queue_depth())

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connack = reason_code

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected = False

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        if reason_code.is_failure:  # refused: keep the cursor, drop the session, retry after back-off
            self._refused = True
            self.counters["refused_by_upstream"] += 1
            self.last_error = "upstream broker refused a publish: %s" % reason_code
            log.error("upstream broker refused envelopes on %s: %s; nothing is skipped, will retry",
                      self.topic, reason_code)
            self._connected = False
            return
        with self._lock:
            for entry in self._inflight:
                if entry[0] == mid:
                    entry[4] = True
                    break
            advanced = False
            while self._inflight and self._inflight[0][4]:
                _mid, event_id, h, n, _ok = self._inflight.popleft()
                self._acked = (event_id, h)
                self.counters["forwarded"] += n
                self.counters["acked_messages"] += 1
                advanced = True
            if advanced:
                self._acked_cond.notify_all()

    def _pump(self, client):
        sock = client.socket()
        wake = self._wake_r
        while self._connected and not self._stopping.is_set():
            self._fill_window(client)
            if not self._connected:
                break
            want_w = [sock] if client.want_write() else []
            r, w, _x = select.select([sock, wake], want_w, [], 1.0)
            if sock not in r and getattr(sock, "pending", None) and sock.pending():
                r.append(sock)  # TLS: decrypted bytes already buffered, select cannot see them
            if wake in r:
                try:
                    while wake.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                with self._lock:
                    self._wake_pending = False
            if sock in r and client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break
            if w and client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                break
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                break
            now = time.monotonic()
            if self._acked[0] != self._persisted and (now - self._last_persist >= self.cursor_every_s
                                                      or not self._inflight):
                self._persist_cursor()

    def _fill_window(self, client):
        while len(self._inflight) < self.window:
            sent_id, sent_hash = self._sent
            events = self._next_events(sent_id, self.batch_max)
            if not events:
                return
            if events[0].event_id != sent_id + 1 or (sent_id and events[0].prev_hash != sent_hash):
                self.counters["chain_errors"] += 1
                log.error("event %d does not continue the chain after event %d", events[0].event_id, sent_id)
            envs = [envelope.build(e, self.gateway_id) for e in events]
            envelope.sign_batch(envs, self.key)
            payload = "\n".join(envelope.dumps(e) for e in envs).encode("utf-8")
            with self._lock:
                info = client.publish(self.topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self._connected = False
                    return
                self._inflight.append([info.mid, events[-1].event_id, events[-1].hash, len(events), False])
                self._sent = (events[-1].event_id, events[-1].hash)
            self.counters["published_messages"] += 1


DEFAULT_KEY_FILE = "upstream_signing_key.pem"


def signing_key_path(config):
    """Where the gateway's Ed25519 key is: [upstream] key_file, under the data dir."""
    return config.path_of(config.section("upstream").get("key_file", DEFAULT_KEY_FILE))


def public_key_text(config, raw_hex=False):
    """The gateway's public key for `fengqiao verify --pubkey` (the key is created if missing)."""
    from gateway.keys import SigningKey

    key = SigningKey.load_or_create(signing_key_path(config))
    return key.public.raw.hex() if raw_hex else key.public_pem().rstrip("\n")


class NewChainRequired(UpstreamError):
    """The store is empty but this signing key already signed a chain (or --new-chain was misused)."""


def chain_marker_path(config):
    """A small JSON file next to the signing key: which chain epoch the key signs (survives the database)."""
    return signing_key_path(config) + ".chain"


def _write_marker(path, info):
    from gateway.keys import write_private_file

    write_private_file(path, json.dumps(info, sort_keys=True) + "\n")


def chain_guard(store, marker, gateway_id, key_id, new_chain=False):
    """Refuse an empty store when the key already signed a chain; with new_chain start epoch N+1.

    The marker (`<key_file>.chain`) is written as soon as the store holds an event, so a store
    deleted or lost later is noticed at the next start: `NewChainRequired`, unless `new_chain`,
    which makes event 1 a `chain_epoch` gateway event {epoch, previous_epoch, gateway_id}. The
    county recorder and `fengqiao verify` see it as a new chain epoch (gateway/envelope.py).
    Returns the current epoch."""
    from gateway.envelope import CHAIN_EPOCH

    try:
        with open(marker, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as exc:
        raise NewChainRequired("cannot read the chain marker %s (%s): restore it from the key's backup" % (marker, exc)) from exc
    head = store.head()[0]
    if head == 0 and info is not None:
        if not new_chain:
            raise NewChainRequired(
                "the event store %s is empty, but the signing key already signed chain epoch %s of gateway %s"
                " (%s). Starting at event 1 again would fork the county's copy. If the database was lost or"
                " damaged, restore the last backup (gateway/README.md, 'Backup and restore'); if there is"
                " none, start a new chain epoch the county will see: `fengqiao gateway run --new-chain`."
                % (store.path, info.get("epoch"), info.get("gateway_id"), marker))
        epoch = int(info.get("epoch", 1)) + 1
        store.append_gateway_event(CHAIN_EPOCH, {"epoch": epoch, "previous_epoch": info.get("epoch"),
                                                 "gateway_id": gateway_id, "key_id": key_id})
        log.warning("started new chain epoch %d (the previous chain, epoch %s, is not in this store)",
                    epoch, info.get("epoch"))
    elif new_chain and head:
        raise NewChainRequired("--new-chain is only for an empty store; %s holds %d event(s)" % (store.path, head))
    epochs = store.gateway_events([CHAIN_EPOCH])
    epoch = epochs[-1].body["epoch"] if epochs else 1
    want = {"gateway_id": gateway_id, "key_id": key_id, "epoch": epoch}

    def mark(_events=None):
        if info != want:
            _write_marker(marker, want)

    if store.head()[0]:
        mark()
    else:   # an empty store: the marker is written with the first event
        done = []

        def first(events):
            if not done:
                done.append(True)
                mark()
        store.subscribe(first)
    return epoch


def attach(app):
    """Gateway plugin entry point: start forwarding if the config has an [upstream] table."""
    from gateway.keys import SigningKey

    section = dict(app.config.section("upstream"))
    if not section:
        log.warning("no [upstream] section in the config: events are stored but not forwarded")
        return None
    gateway_id = section.get("gateway_id")
    if not gateway_id:
        raise UpstreamError("[upstream] needs 'gateway_id' (it prefixes every envelope id)")
    key = SigningKey.load_or_create(signing_key_path(app.config))
    chain_guard(app.store, chain_marker_path(app.config), gateway_id, key.key_id, getattr(app, "new_chain", False))
    if section.get("cafile"):
        section["cafile"] = app.config.path_of(section["cafile"])
    up = Upstream.from_config(section, app.store, key, gateway_id, clock=app.clock)
    metrics = getattr(app, "metrics", None)
    if metrics is not None:
        metrics.gauge_fn("fengqiao_forward_queue_depth", up.queue_depth)
        metrics.gauge_fn("fengqiao_upstream_connected", lambda: int(up.stats()["connected"]),
                         "1 while connected to the upstream (county) broker")
        metrics.gauge_fn("fengqiao_upstream_forwarded_event_id", lambda: up.cursor()[0],
                         "Last event id the upstream broker acknowledged")
    log.info("upstream forwarding to %s:%d topic %s as %s (key %s), resuming after event %d",
             up.host, up.port, up.topic, gateway_id, key.key_id, up.cursor()[0])
    return _Plugin(up.start())


class _Plugin:
    """What attach() returns: the app calls stop() before it closes the store."""

    def __init__(self, upstream):
        self.upstream = upstream

    def stop(self):
        self.upstream.close()
