"""The resilient link: one MQTT session to the township broker, kept alive for as long as the
device runs. The protocol layer is mqtt.py; what must be resent lives in the outbox, not here.

Failures it survives, and what it does:

- Wi-Fi gone: board.network_up() is asked before every attempt; while it says no, the link stays
  down and retries with backoff. Events keep going to the outbox meanwhile.
- Broker gone, restarted or refusing (connection refused, CONNACK refused, bad credentials):
  reconnect with exponential backoff (1 s doubling to 60 s) plus up to 50 % random jitter, so a
  village of devices does not reconnect in lock-step after a township power cut.
- Half-open TCP (the router rebooted, the broker host vanished without a FIN): PINGREQ every
  keepalive/2 seconds; no PINGRESP within keepalive/2 (at least 2 s), or no PUBACK within 15 s,
  means the session is dead: it is closed and reconnected.
- Slow broker: every socket operation has a deadline (connect, TLS handshake, write, each packet
  read); the socket is non-blocking and polled, so a slow broker never blocks the button, the
  LED or the watchdog. Deadlines are generous (seconds), not tight.
- TLS failure (server certificate not signed by the provisioned CA, wrong host name, handshake
  cut): the session attempt fails with MqttError("TlsFailure", ...), is logged and counted, and
  retried with backoff; the device never falls back to plain TCP.
- Power cut: nothing to recover here (clean session, no state); the outbox resends what was not
  acknowledged, in order, after the next connect.
- Broker sends garbage or oversize packets: MqttError("BadPacket", ...), session closed and
  reopened.
- Anything unexpected inside a session (MemoryError, a bug in a downlink handler): the socket is
  closed and the link marked down before the exception reaches the supervisor, which restarts
  this task.

Known limits: the DNS lookup (socket.getaddrinfo) blocks on MicroPython; provision the broker as
the host name in its certificate, served by the village router's DNS or a static entry, so it
answers fast. TLS verifies the certificate against that host name (server_hostname).

One QoS 1 publish is in flight at a time, from one caller (the uplink task): publish() hands its
packet to the session task and polls for the PUBACK. Only the session task writes to the socket,
so writes never interleave and no lock, event or wait_for task is needed (asyncio's Event, Lock
and wait_for modules together take ~2.5 KB of heap once imported). The device subscribes to its
own downlink topic at QoS 1 and PUBACKs every QoS 1 PUBLISH it receives.

Errors: mqtt.MqttError, exported here as LinkDown (one class; args[0] names the failure:
NetworkDown, Timeout, Closed, Refused, BadPacket, TlsFailure).

Private names are short and shared with other modules (each distinct name is a qstr, ~11 bytes
of heap for good): conn the session's socket, _out a PUBLISH packet for the session task to
write, _p the packet id of the newest PUBLISH, ack that of the newest PUBACK, tls the
SSLContext (or None). `topic` (our uplink topic) is public: the uplink signs frames for it.
"""

import random
import time

# const() is the compiler's: no `from micropython import const` (it would cost a global).

import mqtt
import tasks
from protocol import frame

LinkDown = mqtt.MqttError

_POLL_MS = const(20)
_OP_MS = const(10000)  # SUBACK deadline (mqtt.py has the same for every socket operation)
_PUBACK_MS = const(15000)


class Link:
    def __init__(self, board, cfg, on_message, log=print, keepalive_s=60, backoff_min_ms=1000,
                 backoff_max_ms=60000):
        self.board = board
        self.cfg = cfg
        self.on_message = on_message
        self.log = log
        self.client_id = frame.device_id_text(cfg["device_id"])
        self.topic = frame.uplink_topic(cfg["device_id"])  # also the uplink's, for the MAC
        self.keepalive_s = keepalive_s
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.up = False
        self.sessions = 0  # sessions established since boot (the uplink resends on each new one)
        self.failures = 0
        self.conn = None
        self._out = None
        self._p = 0
        self.ack = 0
        self.tls = None
        if cfg.get("tls"):
            # Made once, early: mbedTLS parses the CA into a few KB that must not have to be
            # found in a fragmented heap later. A CA that cannot be used raises TlsFailure here.
            self.tls = mqtt.tls_context(cfg.get("ca_pem") or "")
            mqtt.reserve()  # the TLS socket's piece of the heap (mqtt.py)

    async def publish(self, payload):
        """Publish one frame on our uplink topic at QoS 1 and wait for its PUBACK.

        Raises LinkDown if there is no session or it dies meanwhile (the caller keeps the event in
        the outbox and tries again after the next connect). The session task enforces the
        PUBACK deadline: no PUBACK within 15 s ends the session."""
        if not self.up:
            raise LinkDown("Closed")
        n = self.sessions
        self._p = pid = self._p % 65535 + 1
        self._out = mqtt.publish_packet(self.topic, payload, pid)
        while self.ack != pid:
            if not self.up or self.sessions != n:
                raise LinkDown("Closed")
            await tasks.sleep_ms(_POLL_MS)

    async def run(self):
        """Forever: connect, serve the session until it fails, back off, retry."""
        backoff = self.backoff_min_ms
        while True:
            t_start = time.ticks_ms()
            n = self.sessions
            try:
                # -- one session --
                cfg = self.cfg
                if not self.board.network_up(cfg):
                    raise LinkDown("NetworkDown")
                self.conn = sock = await mqtt.open(cfg["broker_host"], cfg["broker_port"], self.tls)
                await mqtt.io(sock, mqtt.connect_packet(self.client_id, frame.mqtt_password(cfg["key"]),
                                                        self.keepalive_s, frame.downlink_topic(cfg["device_id"])),
                              True)
                one = bytearray(1)  # the first byte of each packet: polled without allocating
                first, body = await mqtt.recv(sock, one)
                if first != 0x20 or len(body) != 2:
                    raise LinkDown("BadPacket", first)  # not a CONNACK
                if body[1]:
                    raise LinkDown("Refused", body[1])
                # Nothing is usable before the SUBACK (a PUBLISH may come first: it is handled).
                t = ping = time.ticks_ms()  # t: when the SUBSCRIBE, then the newest PUBLISH, went out
                ping_out = pub_out = False
                while True:
                    if mqtt.poll(sock, one):
                        p = await mqtt.recv(sock, one, 1)
                        first, body = p
                        kind = first & 0xF0
                        if kind == 0x30:  # PUBLISH
                            topic, pid, payload = mqtt.parse_publish(p)
                            if pid is not None:
                                await mqtt.io(sock, bytes((0x40, 2, pid >> 8, pid & 0xFF)), True)  # PUBACK
                            self.on_message(topic, payload)
                        elif kind == 0x40 and len(body) == 2:  # PUBACK
                            self.ack = (body[0] << 8) | body[1]
                        elif kind == 0x90:  # SUBACK
                            if not self.up:
                                if len(body) != 3 or body[2] == 0x80:
                                    raise LinkDown("Refused", 0x80)  # the ACL refused our downlink topic
                                self.up = True
                                self.sessions += 1
                                self.log("link: session %d up" % self.sessions)
                        elif kind == 0xD0:  # PINGRESP
                            ping_out = False
                        else:
                            raise LinkDown("BadPacket", first)
                        continue
                    now = time.ticks_ms()
                    if not self.up:
                        if time.ticks_diff(now, t) > _OP_MS:
                            raise LinkDown("Timeout", "SUBACK")
                    elif self._out:
                        await mqtt.io(sock, self._out, True)
                        self._out = None
                        t = time.ticks_ms()
                        pub_out = True
                    elif pub_out and self.ack != self._p and time.ticks_diff(now, t) > _PUBACK_MS:
                        raise LinkDown("Timeout", "PUBACK")
                    # PINGREQ every keepalive/2; no PINGRESP within that (at least 2 s): half-open.
                    since = time.ticks_diff(now, ping)
                    if ping_out:
                        if since > max(2000, self.keepalive_s * 500):
                            raise LinkDown("Timeout", "half-open")  # no PINGRESP
                    elif since > self.keepalive_s * 500:
                        await mqtt.io(sock, b"\xc0\x00", True)  # PINGREQ
                        ping = now
                        ping_out = True
                    await tasks.sleep_ms(_POLL_MS)
            except (LinkDown, OSError) as e:
                self.failures += 1
                self.log("link: %r" % (e,))
            finally:
                # Also on anything else (MemoryError, a bug in a downlink handler): close the
                # socket and say "down" before the supervisor restarts this task.
                self.up = False
                self._out = None
                if self.conn:
                    try:
                        self.conn.close()
                    except OSError:
                        pass
                self.conn = sock = None
                if self.tls:
                    mqtt.reserve()  # the socket's piece is free now: held for the next one
            if self.sessions != n and time.ticks_diff(time.ticks_ms(), t_start) > 10000:
                # A session that came up and lasted resets the backoff; one that the broker
                # drops at once (a kick loop) keeps it growing.
                backoff = self.backoff_min_ms
            await tasks.sleep_ms(backoff + random.getrandbits(16) * (backoff // 2) // 65536)
            backoff = min(backoff * 2, self.backoff_max_ms)
