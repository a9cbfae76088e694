"""A loopback TCP proxy that flaps like village Wi-Fi, between devices and the broker (tests only).

    proxy = FlakyProxy("127.0.0.1", broker.tls_port).start()   # devices connect to proxy.port
    proxy.drop()          # every open connection is reset (the AP rebooted, the 4G router re-dialled)
    proxy.set_delay(300)  # each chunk is held 300 ms before it is passed on, both ways, in order
    proxy.half_open()     # open connections go silent for good: no data, no FIN, no RST (a NAT
                          # entry expired); the peers notice only through their own keepalive
    proxy.set_down(True)  # no link at all: new connections are refused, open ones reset
    proxy.set_down(False); proxy.set_delay(0)
    proxy.stats()         # accepted, refused, dropped, half_opened, open, bytes up/down
    proxy.stop()

TLS goes through unchanged (the proxy only moves bytes), so a device still checks the broker's
certificate. What it does NOT model: packet loss inside a live connection (TCP hides it; only the
delay it causes shows, which set_delay models) and a changed IP address.

Failure modes of the proxy itself: a peer that resets its side ends that connection (both
sides closed); stop() closes everything, including half-open connections. Errors from a closed
socket inside a pump end that pump only; nothing else is swallowed.
"""

import collections
import socket
import threading
import time

from tools.testing.procs import free_port


class ProxyError(RuntimeError):
    """The proxy could not listen or was used after stop()."""


class _Conn:
    def __init__(self, client, upstream):
        self.client, self.upstream = client, upstream
        self.dead = False      # half-open: forwards nothing ever again, closes nothing
        self.closed = False
        self.lock = threading.Lock()

    def close(self, reset=False):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            try:
                if reset:  # SO_LINGER 0: close sends RST, as a dropped link looks to the peer
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
            except OSError:
                pass


class FlakyProxy:
    def __init__(self, target_host, target_port, listen_port=None, host="127.0.0.1"):
        self.target = (target_host, int(target_port))
        self.host = host
        self.port = listen_port or free_port(host)
        self.delay_ms = 0
        self.down = False
        self._conns = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = None
        self._thread = None
        self.counts = collections.Counter()

    # -- control ------------------------------------------------------------------------------
    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.host, self.port))
        except OSError as exc:
            s.close()
            raise ProxyError("proxy cannot listen on %s:%d: %s" % (self.host, self.port, exc)) from exc
        s.listen(64)
        s.settimeout(0.2)
        self._listener = s
        self._thread = threading.Thread(target=self._accept_loop, name="flaky-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self._listener:
            self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()

    def set_delay(self, ms):
        self.delay_ms = max(0, int(ms))

    def set_down(self, down):
        self.down = bool(down)
        if down:
            self.drop()

    def drop(self):
        """Reset every open connection (both sides); returns how many."""
        conns = self._take(lambda c: not c.dead)
        for c in conns:
            c.close(reset=True)
        self.counts["dropped"] += len(conns)
        return len(conns)

    def half_open(self):
        """Every open connection goes silent for ever (kept open, nothing passed); returns how many."""
        n = 0
        with self._lock:
            for c in self._conns:
                if not c.dead and not c.closed:
                    c.dead = True
                    n += 1
        self.counts["half_opened"] += n
        return n

    def open_connections(self):
        with self._lock:
            return sum(1 for c in self._conns if not c.dead and not c.closed)

    def stats(self):
        d = dict(self.counts)
        d["open"] = self.open_connections()
        return d

    def _take(self, pred):
        with self._lock:
            taken = [c for c in self._conns if pred(c)]
            self._conns = [c for c in self._conns if not pred(c)]
        return taken

    # -- data path ----------------------------------------------------------------------------
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.down:
                self.counts["refused"] += 1
                _Conn(client, client).close(reset=True)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self.counts["target_unreachable"] += 1
                _Conn(client, client).close(reset=True)
                continue
            for s in (client, upstream):
                s.settimeout(0.2)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.append(conn)
            self.counts["accepted"] += 1
            for src, dst, name in ((client, upstream, "bytes_up"), (upstream, client, "bytes_down")):
                threading.Thread(target=self._pump, args=(conn, src, dst, name), daemon=True,
                                 name="flaky-proxy-pump").start()

    def _pump(self, conn, src, dst, name):
        while not self._stop.is_set() and not conn.closed:
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                if conn.dead:   # half-open: the FIN is swallowed too; keep the other side hanging
                    return
                break
            if conn.dead:
                continue        # swallowed
            if self.delay_ms:
                time.sleep(self.delay_ms / 1000.0)
            try:
                dst.sendall(data)
            except OSError:
                break
            self.counts[name] += len(data)
        if not conn.dead:
            conn.close()
            self._take(lambda c: c is conn)
