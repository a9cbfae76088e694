"""The resilient link: one MQTT session to the township broker, kept alive for as long as the
device runs. The protocol layer is mqtt.py; what must be resent lives in the outbox, not here.

Failures it survives, and what it does:

- Wi-Fi gone: board.network_up() is asked before every attempt; while it says no, the link stays
  down and retries with backoff. Events keep going to the outbox meanwhile.
- Broker gone, restarted or refusing (connection refused, CONNACK refused, bad credentials):
  reconnect with exponential backoff (1 s doubling to 60 s) plus up to 50 % random jitter, so a
  village of devices does not reconnect in lock-step after a township power cut.
- Half-open TCP (the router rebooted, the broker host vanished without a FIN): PINGREQ every
  keepalive/2 seconds; no PINGRESP within `ping_timeout_ms`, or no PUBACK within
  `publish_timeout_ms`, means the session is dead: it is closed and reconnected.
- Slow broker: every socket operation has a deadline (connect, TLS handshake, write, each packet
  read); the socket is non-blocking and polled, so a slow broker never blocks the button, the
  LED or the watchdog. Deadlines are generous (seconds), not tight.
- TLS failure (server certificate not signed by the provisioned CA, wrong host name, handshake
  cut): the session attempt fails with mqtt.TlsFailure, is logged and counted, and retried with
  backoff; the device never falls back to plain TCP.
- Power cut: nothing to recover here (clean session, no state); the outbox resends what was not
  acknowledged, in order, after the next connect.
- Broker sends garbage or oversize packets: mqtt.BadPacket, session closed and reopened.
- Anything unexpected inside a session (MemoryError, a bug in a downlink handler): the socket is
  closed and the link marked down before the exception reaches the supervisor, which restarts
  this task.

Known limits: the DNS lookup (socket.getaddrinfo) blocks on MicroPython; provision the broker as
the host name in its certificate, served by the village router's DNS or a static entry, so it
answers fast. TLS verifies the certificate against that host name (server_hostname).

One QoS 1 publish is in flight at a time (publish() holds a lock until its PUBACK); the device
subscribes to its own downlink topic at QoS 1 and PUBACKs every QoS 1 PUBLISH it receives.
"""

import asyncio
import random
from time import ticks_diff, ticks_ms

import mqtt
from protocol import frame

BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000


class LinkDown(Exception):
    """publish() was called while there is no session (or the session died during it)."""


class NetworkDown(Exception):
    """The board has no network (Wi-Fi not joined)."""


class Link:
    def __init__(self, board, cfg, on_message, log=print, keepalive_s=60, op_timeout_ms=10000,
                 publish_timeout_ms=15000, ping_timeout_ms=None, backoff_min_ms=BACKOFF_MIN_MS,
                 backoff_max_ms=BACKOFF_MAX_MS):
        self.board = board
        self.cfg = cfg
        self.on_message = on_message
        self.log = log
        self.client_id = frame.device_id_text(cfg["device_id"])
        self.password = frame.mqtt_password(cfg["key"])
        self.up_topic = frame.uplink_topic(cfg["device_id"])
        self.down_topic = frame.downlink_topic(cfg["device_id"])
        self.keepalive_s = keepalive_s
        self.op_timeout_ms = op_timeout_ms
        self.publish_timeout_ms = publish_timeout_ms
        # No PINGRESP within half the keepalive (at least 2 s): the connection is half-open.
        self.ping_timeout_ms = ping_timeout_ms or max(2000, keepalive_s * 500)
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.up = False
        self.sessions = 0  # sessions established since boot (the uplink resends on each new one)
        self.failures = 0
        self.last_error = None
        self._conn = None
        self._pid = 0
        self._acked = 0
        self._puback = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._pub_lock = asyncio.Lock()
        self._tls = None
        if cfg.get("tls"):
            # Made once, early: mbedTLS parses the CA into a few KB that must not have to be
            # found in a fragmented heap later. A CA that cannot be used raises TlsFailure here.
            self._tls = mqtt.tls_context(cfg.get("ca_pem") or "")

    # -- publishing (called by the uplink task) -----------------------------------------------
    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def _send(self, data):
        async with self._send_lock:
            if self._conn is None:
                raise LinkDown("no session")
            await self._conn.write(data, self.op_timeout_ms)

    async def publish(self, payload):
        """Publish one frame on our uplink topic at QoS 1 and wait for its PUBACK.

        Raises LinkDown if there is no session or it dies meanwhile (the caller keeps the event in
        the outbox and tries again after the next connect)."""
        async with self._pub_lock:
            if not self.up:
                raise LinkDown("no session")
            pid = self._next_pid()
            self._puback.clear()
            try:
                await self._send(mqtt.publish_packet(self.up_topic, payload, pid))
                t0 = ticks_ms()
                while self._acked != pid:
                    if not self.up:
                        raise LinkDown("session lost waiting for PUBACK")
                    left = self.publish_timeout_ms - ticks_diff(ticks_ms(), t0)
                    if left <= 0:
                        raise mqtt.Timeout("PUBACK")
                    try:
                        await asyncio.wait_for_ms(self._puback.wait(), left)
                    except asyncio.TimeoutError:
                        pass
                    self._puback.clear()
            except (mqtt.MqttError, OSError) as e:
                self._kill("publish: %r" % (e,))
                raise LinkDown(str(e))

    def _kill(self, why):
        if self._conn is not None:
            self.log("link: closing session: %s" % why)
            self._conn.close()
        self._conn = None
        self.up = False
        self._puback.set()

    # -- the session task ---------------------------------------------------------------------
    async def run(self):
        """Forever: connect, serve the session until it fails, back off, retry."""
        backoff = self.backoff_min_ms
        while True:
            t_start = ticks_ms()
            sessions_before = self.sessions
            try:
                await self._session()
            except (mqtt.MqttError, OSError, NetworkDown, LinkDown) as e:
                self.failures += 1
                self.last_error = "%s: %s" % (type(e).__name__, e)
                self.log("link: %s" % self.last_error)
            finally:
                # Also on anything else (MemoryError, a bug in a downlink handler): close the
                # socket and say "down" before the supervisor restarts this task.
                self._kill("ended")
            if self.sessions != sessions_before and ticks_diff(ticks_ms(), t_start) > 10000:
                # A session that came up and lasted resets the backoff; one that the broker
                # drops at once (a kick loop) keeps it growing.
                backoff = self.backoff_min_ms
            delay = backoff + random.getrandbits(16) * (backoff // 2) // 65536
            await asyncio.sleep_ms(delay)
            backoff = min(backoff * 2, self.backoff_max_ms)

    async def _session(self):
        cfg = self.cfg
        if not self.board.network_up(cfg):
            raise NetworkDown("network not up")
        conn = await mqtt.Conn.open(cfg["broker_host"], cfg["broker_port"], self._tls, self.op_timeout_ms)
        self._conn = conn
        await self._send(mqtt.connect_packet(self.client_id, self.client_id, self.password, self.keepalive_s))
        first, body = await conn.read_packet(self.op_timeout_ms)
        if first != mqtt.CONNACK or len(body) != 2:
            raise mqtt.BadPacket("expected CONNACK")
        if body[1] != 0:
            raise mqtt.Refused(body[1])
        sub_pid = self._next_pid()
        await self._send(mqtt.subscribe_packet(sub_pid, self.down_topic, 1))
        t0 = ticks_ms()
        while True:  # SUBACK before anything else is usable (a PUBLISH may come first: handle it)
            first, body = await conn.read_packet(self.op_timeout_ms - ticks_diff(ticks_ms(), t0))
            if first == mqtt.SUBACK:
                if len(body) != 3 or body[2] == 0x80:
                    raise mqtt.Refused(0x80)  # the ACL refused our downlink topic
                break
            await self._handle(first, body)
        self.up = True
        self.sessions += 1
        self.log("link: session %d up" % self.sessions)
        ping_every_ms = self.keepalive_s * 500
        last_ping = ticks_ms()
        ping_out = False
        while self._conn is conn:
            first = conn.poll_first()
            if first is not None:
                first, body = await conn.read_rest(first, self.op_timeout_ms)
                if first == mqtt.PINGRESP:
                    ping_out = False
                else:
                    await self._handle(first, body)
                continue
            now = ticks_ms()
            since = ticks_diff(now, last_ping)
            if ping_out and since > self.ping_timeout_ms:
                raise mqtt.Timeout("no PINGRESP: half-open connection")
            if not ping_out and since > ping_every_ms:
                await self._send(mqtt.PINGREQ_PKT)
                last_ping = now
                ping_out = True
            await asyncio.sleep_ms(20)
        raise LinkDown("session closed")

    async def _handle(self, first, body):
        kind = first & 0xF0
        if kind == mqtt.PUBACK:
            if len(body) != 2:
                raise mqtt.BadPacket("bad PUBACK")
            self._acked = (body[0] << 8) | body[1]
            self._puback.set()
        elif kind == mqtt.PUBLISH:
            topic, pid, payload = mqtt.parse_publish(first, body)
            if pid is not None:
                await self._send(mqtt.puback_packet(pid))
            self.on_message(topic, payload)
        elif kind in (mqtt.SUBACK, mqtt.PINGRESP):
            pass
        else:
            raise mqtt.BadPacket("unexpected packet type 0x%02x" % first)
