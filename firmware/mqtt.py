"""MQTT 3.1.1 packets and a non-blocking connection with a timeout on every operation.

This is the protocol layer only (what `umqtt.simple` is to `umqtt.robust`): it builds and parses
the packets a device needs (CONNECT, CONNACK, PUBLISH QoS 0/1, PUBACK, SUBSCRIBE, SUBACK,
PINGREQ, PINGRESP, DISCONNECT) and moves bytes over a non-blocking socket, polling with
`asyncio.sleep_ms` so that a slow or silent broker never blocks the other tasks. Reconnection,
keepalive and backoff policy live in link.py.

Errors (all subclass MqttError):
    Timeout      an operation did not complete within its deadline
    Closed       the peer closed the connection or the socket failed
    Refused      CONNACK with a non-zero return code (.code: 4 bad credentials, 5 not authorised)
    BadPacket    the broker sent something that is not a valid packet for a client
    TlsFailure   the TLS handshake failed (certificate not signed by our CA, wrong host name ...)
"""

import asyncio
import socket
import struct
from errno import EAGAIN, EINPROGRESS, ETIMEDOUT
from time import ticks_diff, ticks_ms

from micropython import const

CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBACK = const(0x90)
PINGRESP = const(0xD0)

PINGREQ_PKT = b"\xc0\x00"
DISCONNECT_PKT = b"\xe0\x00"
MAX_PACKET = const(1024)  # our frames are <= 256 bytes; anything bigger is refused
_POLL_MS = const(10)
# Errors a non-blocking socket (plain or TLS) reports while an operation is still in progress.
_BUSY = (EAGAIN, EINPROGRESS, ETIMEDOUT, 11, 115, 118, 119)


class MqttError(Exception):
    pass


class Timeout(MqttError):
    pass


class Closed(MqttError):
    pass


class Refused(MqttError):
    def __init__(self, code):
        MqttError.__init__(self, "CONNACK return code %d" % code)
        self.code = code


class BadPacket(MqttError):
    pass


class TlsFailure(MqttError):
    pass


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">H", len(s)) + s


def _packet(first, body):
    n = len(body)
    out = bytearray([first])
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes(out) + body


def connect_packet(client_id, user, password, keepalive_s):
    """CONNECT with clean session: the outbox, not the broker, keeps what must be resent."""
    flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    body = _str("MQTT") + struct.pack(">BBH", 4, flags, keepalive_s) + _str(client_id)
    if user is not None:
        body += _str(user)
    if password is not None:
        body += _str(password)
    return _packet(0x10, body)


def publish_packet(topic, payload, pid, qos=1, dup=False):
    first = PUBLISH | (qos << 1) | (0x08 if dup else 0)
    body = _str(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    return _packet(first, body)


def puback_packet(pid):
    return struct.pack(">BBH", PUBACK, 2, pid)


def subscribe_packet(pid, topic, qos=1):
    return _packet(0x82, struct.pack(">H", pid) + _str(topic) + bytes([qos]))


def parse_publish(first, body):
    """(topic, pid or None, payload) of a PUBLISH body; BadPacket when malformed."""
    if len(body) < 2:
        raise BadPacket("short PUBLISH")
    n = (body[0] << 8) | body[1]
    qos = (first >> 1) & 3
    end = 2 + n + (2 if qos else 0)
    if qos == 3 or len(body) < end:
        raise BadPacket("bad PUBLISH")
    try:
        topic = str(body[2:2 + n], "utf-8")
    except UnicodeError:
        raise BadPacket("PUBLISH topic not UTF-8")
    pid = ((body[2 + n] << 8) | body[3 + n]) if qos else None
    return topic, pid, body[end:]


def tls_context(ca_pem):
    """A client context that requires the server certificate to be signed by `ca_pem`.

    MicroPython's `tls` (mbedTLS) takes the CA as DER bytes, positionally, so the PEM text from the
    identity is decoded here. Raises TlsFailure if the CA is not a PEM certificate.
    """
    try:
        import tls
    except ImportError:
        import ssl as tls
    from binascii import a2b_base64

    if isinstance(ca_pem, (bytes, bytearray)):
        ca_pem = ca_pem.decode()
    a = ca_pem.find("-----BEGIN CERTIFICATE-----")
    b = ca_pem.find("-----END CERTIFICATE-----")
    if a < 0 or b < a:
        raise TlsFailure("CA certificate is not PEM")
    try:
        der = a2b_base64(ca_pem[a + 27:b])  # skips the line breaks
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        ctx.load_verify_locations(der)
    except ValueError as e:
        raise TlsFailure("CA certificate unusable: %s" % e)
    return ctx


class Conn:
    """One non-blocking connection to the broker, plain or TLS."""

    def __init__(self, sock):
        self.sock = sock
        self._one = bytearray(1)

    @staticmethod
    async def open(host, port, tls_ctx, timeout_ms):
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        raw = socket.socket(ai[0], ai[1], ai[2])
        raw.setblocking(False)
        try:
            raw.connect(ai[-1])
        except OSError as e:
            if e.errno not in _BUSY:
                raw.close()
                raise Closed("connect: %s" % e)
        sock = raw
        if tls_ctx is not None:
            try:
                sock = tls_ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
            except (OSError, ValueError) as e:
                raw.close()
                raise TlsFailure(str(e))
        conn = Conn(sock)
        # For TCP, wait until the connect finished; TLS then handshakes during the first write.
        import select

        p = select.poll()
        p.register(raw, select.POLLOUT)
        t0 = ticks_ms()
        while True:
            ev = p.poll(0)
            if ev:
                if ev[0][1] & (select.POLLERR | select.POLLHUP):
                    conn.close()
                    raise Closed("connect refused or failed")
                break
            if ticks_diff(ticks_ms(), t0) > timeout_ms:
                conn.close()
                raise Timeout("connect")
            await asyncio.sleep_ms(_POLL_MS)
        return conn

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def _io(self, fn, arg):
        try:
            return fn(arg)
        except OSError as e:
            if e.args and e.args[0] in _BUSY:
                return None
            raise Closed(str(e))
        except ValueError as e:  # mbedTLS reports certificate/handshake failures this way
            raise TlsFailure(str(e))

    async def write(self, data, timeout_ms):
        mv = memoryview(data)
        t0 = ticks_ms()
        while mv:
            n = self._io(self.sock.write, mv)
            if n:
                mv = mv[n:]
                continue
            if ticks_diff(ticks_ms(), t0) > timeout_ms:
                raise Timeout("write")
            await asyncio.sleep_ms(_POLL_MS)

    async def _read_into(self, mv, timeout_ms):
        t0 = ticks_ms()
        while mv:
            n = self._io(self.sock.readinto, mv)
            if n == 0:
                raise Closed("connection closed by broker")
            if n:
                mv = mv[n:]
                continue
            if ticks_diff(ticks_ms(), t0) > timeout_ms:
                raise Timeout("read")
            await asyncio.sleep_ms(_POLL_MS)

    def poll_first(self):
        """Non-blocking: the first byte of the next packet, or None if nothing has arrived."""
        n = self._io(self.sock.readinto, self._one)
        if n == 0:
            raise Closed("connection closed by broker")
        return self._one[0] if n else None

    async def read_rest(self, first, timeout_ms):
        """After poll_first(): read the remaining length and body -> (first, body)."""
        n = 0
        shift = 0
        b = bytearray(1)
        for _ in range(4):
            await self._read_into(memoryview(b), timeout_ms)
            n |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        else:
            raise BadPacket("remaining length longer than 4 bytes")
        if n > MAX_PACKET:
            raise BadPacket("packet of %d bytes" % n)
        body = bytearray(n)
        await self._read_into(memoryview(body), timeout_ms)
        return first, body

    async def read_packet(self, timeout_ms):
        t0 = ticks_ms()
        while True:
            first = self.poll_first()
            if first is not None:
                return await self.read_rest(first, timeout_ms)
            if ticks_diff(ticks_ms(), t0) > timeout_ms:
                raise Timeout("no packet")
            await asyncio.sleep_ms(_POLL_MS)
