"""MQTT 3.1.1 packets and non-blocking socket I/O with a deadline on every operation.

This is the protocol layer only (what `umqtt.simple` is to `umqtt.robust`): it builds and parses
the packets a device needs (CONNECT with SUBSCRIBE, PUBLISH QoS 1; link.py writes the 4-byte
PUBACK and the PINGREQ itself and tells the other packets apart by their type byte) and moves
bytes over a non-blocking socket, polling with `asyncio.sleep_ms` so that a slow or silent broker
never blocks the other tasks. Reconnection, keepalive and backoff policy live in link.py.

One exception class (each class costs ~240 bytes of heap on the device); args[0] names the
failure, so logs (`%r`) and callers still tell them apart:
    MqttError("Timeout", what)       an operation did not complete within its deadline
    MqttError("Closed", why)         the peer closed the connection or the socket failed
    MqttError("Refused", code)       CONNACK code (4 bad credentials, 5 not authorised), or
                                     0x80 when the SUBACK refused our downlink topic
    MqttError("BadPacket", first)    the broker sent something that is not valid for a client
                                     (first: the packet's type byte, or its length)
    MqttError("TlsFailure", why)     the TLS handshake failed (certificate not signed by our CA,
                                     wrong host name ...) or the CA is unusable
link.py adds MqttError("NetworkDown") and exports the class as link.LinkDown.

_enc is the MQTT string encoding (u16 length + UTF-8), pack the fixed header (type byte +
remaining length). Each distinct name is a qstr (~11 bytes of heap for good), so private and
argument names here are short or shared with other modules.
"""

import gc
import socket
import struct
import time

import tasks

# const() is the compiler's: no `from micropython import const` (it would cost a global).

_MAX_PACKET = const(1024)  # our frames are <= 256 bytes; anything bigger is refused
_POLL_MS = const(10)
_OP_MS = const(10000)  # deadline of a connect, a write, a packet once begun (generous: slow brokers)
# The TLS socket object (with mbedTLS's SSL context inside it) is 520 B on the 64-bit Unix port,
# less on a 32-bit board, and must be had in ONE piece, which a running 64 KB heap may not have
# (seen: 11 KB free, the largest piece under 500 B; the link task failed and was restarted).
# So rsv holds a piece that size while no TLS socket is being made: open() lets it go just
# before it wraps the socket, and reserve() takes it back once that socket is closed, when the
# socket's own piece has just come free.
_RESERVE = const(520)
rsv = None


class MqttError(Exception):
    pass


def _enc(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">H", len(s)) + s


def pack(code, body):
    """Fixed header (type byte, remaining length) + body."""
    n = len(body)
    out = bytearray((code,))
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return out + body


def connect_packet(client_id, password, keepalive_s, topic):
    """CONNECT (user name = client id; clean session: the outbox, not the broker, keeps what
    must be resent), then at once SUBSCRIBE to `topic` at QoS 1 with packet id 1 (MQTT 3.1.1
    section 3.1.4: a client need not wait for the CONNACK; nothing else is in flight yet)."""
    return pack(0x10, _enc("MQTT") + struct.pack(">BBH", 4, 0xC2, keepalive_s) + _enc(client_id)
                   + _enc(client_id) + _enc(password)) + pack(0x82, b"\x00\x01" + _enc(topic) + b"\x01")


def publish_packet(topic, data, n):
    """PUBLISH of `data` at QoS 1, packet id `n`."""
    return pack(0x32, _enc(topic) + struct.pack(">H", n) + data)


def parse_publish(buf):
    """(topic, pid or None, payload) of a PUBLISH packet buf = (first byte, body) from recv();
    MqttError BadPacket when malformed."""
    first, body = buf
    qos = (first >> 1) & 3
    if len(body) < 2 or qos == 3:
        raise MqttError("BadPacket", first)
    n = (body[0] << 8) | body[1]
    end = 2 + n + (2 if qos else 0)
    if len(body) < end:
        raise MqttError("BadPacket", first)
    try:
        topic = str(body[2:2 + n], "utf-8")
    except UnicodeError:
        raise MqttError("BadPacket", first)
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
    try:
        der = a2b_base64(ca_pem.split("-----")[2])  # between BEGIN and END; skips line breaks
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        ctx.load_verify_locations(der)
    except (IndexError, ValueError) as e:  # not PEM, or mbedTLS refused it
        raise MqttError("TlsFailure", e)
    return ctx


def reserve():
    """Hold the TLS socket's piece of the heap (see _RESERVE) if it is not held; if there is no
    such piece now, the next open() takes its chance."""
    global rsv
    if rsv is None:
        gc.collect()
        try:
            rsv = bytearray(_RESERVE)
        except MemoryError:
            pass


async def open(host, port, tls):
    """A connected non-blocking socket to the broker, TLS when `tls` (an SSLContext; it
    handshakes during the first write), or MqttError."""
    global rsv
    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    sock = raw = socket.socket(ai[0], ai[1], ai[2])
    try:
        raw.setblocking(False)
        try:
            raw.connect(ai[-1])
        except OSError:
            pass  # in progress, or failed at once: either way poll() below tells
        if tls:
            if rsv is not None:
                rsv = None
                gc.collect()
            try:
                sock = tls.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
            except (OSError, ValueError) as e:
                raise MqttError("TlsFailure", e)
        # Wait until the TCP connect finished.
        import select

        p = select.poll()
        p.register(raw, select.POLLOUT)
        t0 = time.ticks_ms()
        while True:
            ev = p.poll(0)
            if ev:
                if ev[0][1] & (select.POLLERR | select.POLLHUP):
                    raise MqttError("Closed", "connect")
                return sock
            if time.ticks_diff(time.ticks_ms(), t0) > _OP_MS:
                raise MqttError("Timeout", "connect")
            await tasks.sleep_ms(_POLL_MS)
    except BaseException:  # also cancellation: never leak the socket
        try:
            sock.close()
        except OSError:
            pass
        raise


def poll(sock, buf, write=False):
    """One non-blocking transfer into (or from) `buf`: the bytes moved, 0 or None if the socket
    is busy. Called alone with a 1-byte bytearray, it tells whether a packet has begun without
    allocating anything (the link polls every 20 ms)."""
    try:
        n = sock.write(buf) if write else sock.readinto(buf)
    except OSError as e:
        # Still in progress on a non-blocking socket (plain or TLS): EAGAIN 11, ETIMEDOUT
        # 110 (116 on ESP-IDF), EINPROGRESS 115 (119 on ESP-IDF), 118.
        if e.args[0] not in (11, 110, 115, 116, 118, 119):
            raise MqttError("Closed", e)
        return None
    except ValueError as e:  # mbedTLS reports certificate/handshake failures this way
        raise MqttError("TlsFailure", e)
    if n == 0 and not write:
        raise MqttError("Closed")  # by the broker
    return n


async def io(sock, buf, write):
    """Write all of `buf` (write) or fill it (not write) within _OP_MS."""
    mv = memoryview(buf)
    t0 = time.ticks_ms()
    while mv:
        n = poll(sock, mv, write)
        if n:
            mv = mv[n:]
        elif time.ticks_diff(time.ticks_ms(), t0) > _OP_MS:
            raise MqttError("Timeout", "write" if write else "read")
        else:
            await tasks.sleep_ms(_POLL_MS)


async def recv(sock, buf, n=0):
    """The next packet as (first byte, body). `buf` is a 1-byte bytearray; n=1: poll(sock, buf)
    already read the packet's first byte into it."""
    b = buf
    if not n:
        await io(sock, b, False)
    first = b[0]
    n = shift = 0
    while True:
        await io(sock, b, False)
        n |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttError("BadPacket", first)
    if n > _MAX_PACKET:
        raise MqttError("BadPacket", n)
    body = bytearray(n)
    await io(sock, body, False)
    return first, body
