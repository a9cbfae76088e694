"""MQTT 3.1.1 packets and non-blocking socket I/O with a deadline on every operation.

This is the protocol layer only (what `umqtt.simple` is to `umqtt.robust`): it builds and parses
the packets a device needs (CONNECT, PUBLISH QoS 1, SUBSCRIBE; link.py writes the 4-byte PUBACK
and the PINGREQ itself and tells the other packets apart by their type byte) and moves bytes over a non-blocking socket,
polling with `asyncio.sleep_ms` so that a slow or silent broker never blocks the other tasks.
Reconnection, keepalive and backoff policy live in link.py.

One exception class (each class costs ~240 bytes of heap on the device); args[0] names the
failure, so logs (`%r`) and callers still tell them apart:
    MqttError("Timeout", what)       an operation did not complete within its deadline
    MqttError("Closed", why)         the peer closed the connection or the socket failed
    MqttError("Refused", code)       CONNACK code (4 bad credentials, 5 not authorised), or
                                     0x80 when the SUBACK refused our downlink topic
    MqttError("BadPacket", what)     the broker sent something that is not valid for a client
    MqttError("TlsFailure", why)     the TLS handshake failed (certificate not signed by our CA,
                                     wrong host name ...) or the CA is unusable
link.py adds MqttError("NetworkDown") and exports the class as link.LinkDown.
"""

import asyncio
import socket
import struct
from time import ticks_diff, ticks_ms

from micropython import const

_MAX_PACKET = const(1024)  # our frames are <= 256 bytes; anything bigger is refused
_POLL_MS = const(10)
_OP_MS = const(10000)  # deadline of a connect, a write, a packet once begun (generous: slow brokers)
# Errors a non-blocking socket (plain or TLS) reports while an operation is still in progress:
# EAGAIN 11, ETIMEDOUT 110 (116 on ESP-IDF), EINPROGRESS 115 (119 on ESP-IDF), and 118.
_BUSY = (11, 110, 115, 116, 118, 119)


class MqttError(Exception):
    pass


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">H", len(s)) + s


def _packet(first, body):
    n = len(body)
    out = bytearray((first,))
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out + body


def connect_packet(client_id, password, keepalive_s):
    """CONNECT, user name = client id, clean session: the outbox, not the broker, keeps what
    must be resent."""
    return _packet(0x10, _str("MQTT") + struct.pack(">BBH", 4, 0xC2, keepalive_s) + _str(client_id)
                   + _str(client_id) + _str(password))


def publish_packet(topic, payload, pid):
    """PUBLISH at QoS 1."""
    return _packet(0x32, _str(topic) + struct.pack(">H", pid) + payload)


def subscribe_packet(topic):
    """SUBSCRIBE (packet id 1: nothing else is in flight before the SUBACK) at QoS 1."""
    return _packet(0x82, b"\x00\x01" + _str(topic) + b"\x01")


def parse_publish(first, body):
    """(topic, pid or None, payload) of a PUBLISH body; MqttError BadPacket when malformed."""
    qos = (first >> 1) & 3
    if len(body) < 2 or qos == 3:
        raise MqttError("BadPacket", "PUBLISH")
    n = (body[0] << 8) | body[1]
    end = 2 + n + (2 if qos else 0)
    if len(body) < end:
        raise MqttError("BadPacket", "PUBLISH")
    try:
        topic = str(body[2:2 + n], "utf-8")
    except UnicodeError:
        raise MqttError("BadPacket", "topic")
    return topic, ((body[2 + n] << 8) | body[3 + n]) if qos else None, body[end:]


def tls_context(ca_pem):
    """A client context that requires the server certificate to be signed by `ca_pem`.

    MicroPython's `tls` (mbedTLS) takes the CA as DER bytes, positionally, so the PEM text from the
    identity is decoded here. MqttError TlsFailure if the CA is not a usable PEM certificate.
    """
    try:
        import tls
    except ImportError:
        import ssl as tls
    from binascii import a2b_base64

    if not isinstance(ca_pem, str):
        ca_pem = ca_pem.decode()
    a = ca_pem.find("CERTIFICATE-----")  # the end of the BEGIN line
    b = ca_pem.find("-----END", a)
    try:
        if a < 0 or b < 0:
            raise ValueError("not PEM")
        der = a2b_base64(ca_pem[a + 16:b])  # skips the line breaks
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        ctx.load_verify_locations(der)
    except ValueError as e:
        raise MqttError("TlsFailure", e)
    return ctx


def close(sock):
    try:
        sock.close()
    except OSError:
        pass


async def open(host, port, ctx):
    """A connected non-blocking socket to the broker, TLS when `ctx` (it handshakes during the
    first write), or MqttError."""
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    sock = raw = socket.socket(ai[0], ai[1], ai[2])
    try:
        raw.setblocking(False)
        try:
            raw.connect(ai[-1])
        except OSError as e:
            if e.args[0] not in _BUSY:
                raise MqttError("Closed", e)
        if ctx:
            try:
                sock = ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
            except (OSError, ValueError) as e:
                raise MqttError("TlsFailure", e)
        # Wait until the TCP connect finished.
        import select

        p = select.poll()
        p.register(raw, select.POLLOUT)
        t0 = ticks_ms()
        while True:
            ev = p.poll(0)
            if ev:
                if ev[0][1] & (select.POLLERR | select.POLLHUP):
                    raise MqttError("Closed", "connect")
                return sock
            if ticks_diff(ticks_ms(), t0) > _OP_MS:
                raise MqttError("Timeout", "connect")
            await asyncio.sleep_ms(_POLL_MS)
    except BaseException:  # also cancellation: never leak the socket
        close(sock)
        raise


async def io(sock, buf, w, wait=True):
    """Write all of `buf` (w) or fill it (not w) within _OP_MS. Without `wait`, returns False at
    once if nothing could be read."""
    mv = memoryview(buf)
    t0 = ticks_ms()
    while mv:
        try:
            n = sock.write(mv) if w else sock.readinto(mv)
        except OSError as e:
            if e.args[0] not in _BUSY:
                raise MqttError("Closed", e)
            n = None
        except ValueError as e:  # mbedTLS reports certificate/handshake failures this way
            raise MqttError("TlsFailure", e)
        if n == 0 and not w:
            raise MqttError("Closed", "by broker")
        if n:
            mv = mv[n:]
            wait = True  # a packet has begun: the rest must follow
            continue
        if not wait:
            return False
        if ticks_diff(ticks_ms(), t0) > _OP_MS:
            raise MqttError("Timeout", "write" if w else "read")
        await asyncio.sleep_ms(_POLL_MS)
    return True


async def recv(sock, wait=True):
    """The next packet as (first byte, body). Without `wait`, None at once if none has begun."""
    b = bytearray(1)
    if not await io(sock, b, False, wait):
        return None
    first = b[0]
    n = shift = 0
    while True:
        await io(sock, b, False)
        n |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttError("BadPacket", "length")
    if n > _MAX_PACKET:
        raise MqttError("BadPacket", n)
    body = bytearray(n)
    await io(sock, body, False)
    return first, body
