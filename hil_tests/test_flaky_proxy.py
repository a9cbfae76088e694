"""The Wi-Fi flapping proxy (tools/testing/proxy.py) against a plain echo server: it passes bytes,
delays them, drops connections with a reset, refuses while down, and half-opens (silence, no FIN)."""

import socket
import threading
import time

import pytest

from tools.testing.proxy import FlakyProxy


@pytest.fixture
def echo():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve(c):
        with c:
            while True:
                try:
                    data = c.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                c.sendall(data)

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    srv.close()


def _client(port):
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.settimeout(5)
    return c


def test_the_proxy_passes_delays_drops_refuses_and_half_opens(echo):
    proxy = FlakyProxy("127.0.0.1", echo).start()
    try:
        c = _client(proxy.port)
        c.sendall(b"ping")
        assert c.recv(16) == b"ping"

        proxy.set_delay(200)                       # 200 ms each way
        t0 = time.monotonic()
        c.sendall(b"slow")
        assert c.recv(16) == b"slow"
        assert time.monotonic() - t0 >= 0.35
        proxy.set_delay(0)

        assert proxy.drop() == 1                   # reset: the client sees it at once
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            c.sendall(b"x")
            if not c.recv(16):
                raise ConnectionResetError("closed")
        c.close()

        proxy.set_down(True)                       # no link: refused
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            # the proxy accepts and resets at once: on a busy machine the reset can arrive
            # before connect() returns to this thread, so it is raised by connect() itself
            c = _client(proxy.port)
            try:
                if not c.recv(16):
                    raise ConnectionResetError("closed")
            finally:
                c.close()
        proxy.set_down(False)

        c = _client(proxy.port)
        c.sendall(b"a")
        assert c.recv(16) == b"a"
        assert proxy.half_open() == 1              # silence: no data, no FIN, no RST
        c.sendall(b"lost")
        c.settimeout(0.5)
        with pytest.raises(socket.timeout):
            c.recv(16)
        c.close()
        c = _client(proxy.port)                    # a new connection works again
        c.sendall(b"back")
        assert c.recv(16) == b"back"
        c.close()
        s = proxy.stats()
        assert s["dropped"] == 1 and s["refused"] == 1 and s["half_opened"] == 1
    finally:
        proxy.stop()
