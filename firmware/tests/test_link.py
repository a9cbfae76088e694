"""The link on host boards against the project's real Mosquitto: reconnect after a broker
restart with the outbox resent in order; TLS with CA verification; a server certificate from
the wrong CA refused (the device never falls back to plain TCP)."""

import datetime
import os
import time

import pytest

from tools.hostboard import HostBoard, board_heap, provision_dir
from tools.simulate import ScriptedGateway
from tools.testing.procs import wait_for

HEAP = board_heap()  # a board's 64 KB (code in ROMFS), TLS included


def _log(hb):
    with open(hb.log_path, errors="replace") as f:
        return f.read()
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000", "--keepalive-s", "4"]


@pytest.fixture
def broker(tmp_path):
    from gateway.broker import ProjectBroker

    b = ProjectBroker(str(tmp_path / "broker")).start()
    yield b
    b.stop()


def make_board(tmp_path, broker, dev, tls=False, ca_pem=None):
    key = os.urandom(32)
    with open(broker.ca_path) as f:
        ca = f.read()
    cfg = {"device_id": dev, "key": key, "role": "alarm", "broker_host": "localhost" if tls else "127.0.0.1",
           "broker_port": broker.tls_port if tls else broker.port, "tls": tls, "ca_pem": ca_pem or ca}
    provision_dir(str(tmp_path / ("b%x" % dev)), cfg)
    broker.add_device(dev, key)
    return key, HostBoard(str(tmp_path / ("b%x" % dev)), heap=HEAP, args=FAST)


@pytest.mark.timeout(120)
def test_reconnect_after_broker_restart_resends_in_order(tmp_path, broker):
    dev = 0xB1
    key, hb = make_board(tmp_path, broker, dev)
    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    gw.add_device(dev, key)
    try:
        hb.start()
        gw.wait_frame(dev, "boot")
        broker.stop()
        for _ in range(3):  # three alarms while the broker is down
            hb.hold(1200)
            time.sleep(1.6)
        time.sleep(0.5)
        broker.start()
        wait_for(lambda: len(set(f.seq for f in gw.of(dev, "alarm"))) >= 3, 30,
                 "3 distinct alarms after the broker came back (got %r)" % [f.seq for f in gw.of(dev)])
        arrivals = [f.seq for f in gw.of(dev, "alarm")]
        firsts = [s for i, s in enumerate(arrivals) if s not in arrivals[:i]]
        # In order and none lost; a duplicate (a resend after a lost ack) is allowed by SPEC 4.
        assert firsts == sorted(firsts) and len(firsts) == 3, arrivals
    finally:
        hb.stop()
        gw.close()
    assert "session 2 up" in _log(hb)


@pytest.mark.timeout(90)
def test_tls_with_ca_verification_delivers(tmp_path, broker):
    dev = 0xB2
    key, hb = make_board(tmp_path, broker, dev, tls=True)
    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    gw.add_device(dev, key)
    try:
        hb.start()
        gw.wait_frame(dev, "boot", timeout_s=30)
        hb.hold(1200)
        gw.wait_frame(dev, "alarm", timeout_s=15)
    finally:
        hb.stop()
        gw.close()


def _other_ca_pem():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.timeout(90)
def test_tls_refuses_a_server_certificate_from_the_wrong_ca(tmp_path, broker):
    dev = 0xB3
    key, hb = make_board(tmp_path, broker, dev, tls=True, ca_pem=_other_ca_pem())
    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    gw.add_device(dev, key)
    try:
        hb.start()
        wait_for(lambda: _log(hb).count("TlsFailure") >= 2, 20,
                 "two refused TLS handshakes in the board's log")
        hb.hold(1200)
        time.sleep(2.0)
        assert gw.of(dev) == []  # nothing got through, not even over a fallback
        log = _log(hb)
        assert "not correctly signed" in log or "verif" in log.lower(), log[-2000:]
        assert "session 1 up" not in log
    finally:
        hb.stop()
        gw.close()


class FreezableProxy:
    """TCP proxy to the broker that can stop forwarding without closing (a half-open link)."""

    def __init__(self, target_port):
        import socket
        import threading

        self.target_port = target_port
        self.delay_s = 0.0  # a slow broker: every chunk held this long before it is passed on
        self.frozen = threading.Event()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.conns = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.accepted += 1
            u = socket.create_connection(("127.0.0.1", self.target_port))
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b):
        while True:
            try:
                data = a.recv(4096)
            except OSError:
                return
            if not data:
                return
            if self.frozen.is_set():
                continue  # swallowed: nothing arrives, nothing is closed
            if self.delay_s:
                time.sleep(self.delay_s)
            try:
                b.sendall(data)
            except OSError:
                return

    def close(self):
        self.srv.close()
        for c in self.conns:
            c.close()


@pytest.mark.timeout(120)
def test_half_open_connection_is_detected_and_replaced(tmp_path, broker):
    dev = 0xB4
    proxy = FreezableProxy(broker.port)
    key = os.urandom(32)
    cfg = {"device_id": dev, "key": key, "role": "alarm", "broker_host": "127.0.0.1", "broker_port": proxy.port}
    provision_dir(str(tmp_path / "b4"), cfg)
    broker.add_device(dev, key)
    hb = HostBoard(str(tmp_path / "b4"), heap=HEAP, args=FAST)
    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    gw.add_device(dev, key)
    try:
        hb.start()
        gw.wait_frame(dev, "boot")
        proxy.frozen.set()  # the router died: no FIN, no RST, just silence
        wait_for(lambda: "half-open" in _log(hb), 20, "the board to notice the half-open connection")
        proxy.frozen.clear()
        hb.hold(1200)
        # A reconnect attempt may have gone out while still frozen: its CONNACK deadline (10 s)
        # runs out first, then the next attempt gets through.
        try:
            gw.wait_frame(dev, "alarm", timeout_s=40)
        except AssertionError as exc:
            raise AssertionError("%s\nboard log:\n%s" % (exc, _log(hb)[-3000:])) from exc
        assert proxy.accepted >= 2  # a new connection carried it
    finally:
        hb.stop()
        gw.close()
        proxy.close()


@pytest.mark.timeout(90)
def test_power_cut_after_the_press_loses_nothing_and_reuses_no_seq(tmp_path, broker):
    from tools.testing.procs import free_port

    dev = 0xB5
    key = os.urandom(32)
    flash = str(tmp_path / "b5")
    dead_port = free_port()
    cfg = {"device_id": dev, "key": key, "role": "alarm", "broker_host": "127.0.0.1", "broker_port": dead_port}
    provision_dir(flash, cfg)
    hb = HostBoard(flash, heap=HEAP, args=FAST)
    hb.start()
    hb.hold(1200)
    wait_for(lambda: hb.led() != (0, 0, 0), 5, "the LED to react to the alarm")
    hb.kill9()  # power cut while the alarm is only on flash
    # Power back, now with a reachable broker.
    cfg["broker_port"] = broker.port
    provision_dir(flash, cfg)
    broker.add_device(dev, key)
    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    gw.add_device(dev, key)
    try:
        hb.restart()
        alarm = gw.wait_frame(dev, "alarm", timeout_s=20)
        gw.wait_frame(dev, "boot", count=2)  # the first boot's frame was stored too, and arrives
        boots = [f.seq for f in gw.of(dev, "boot")]
        assert boots[0] < alarm.seq < boots[1]  # resent in order, then the new boot's frame
        hb.hold(1200)
        second = gw.wait_frame(dev, "alarm", timeout_s=20, count=2)
        seqs = sorted(f.seq for f in gw.of(dev))
        assert len(seqs) == len(set(seqs)), seqs  # no sequence number reused across the cut
        assert second.seq > alarm.seq and second.seq > max(boots)
    finally:
        hb.stop()
        gw.close()


@pytest.mark.timeout(90)
def test_slow_broker_is_waited_for_not_given_up_on(tmp_path, broker):
    dev = 0xB6
    proxy = FreezableProxy(broker.port)
    proxy.delay_s = 1.5  # every packet 1.5 s late each way: CONNECT -> CONNACK takes 3 s
    key = os.urandom(32)
    provision_dir(str(tmp_path / "b6"), {"device_id": dev, "key": key, "role": "alarm",
                                         "broker_host": "127.0.0.1", "broker_port": proxy.port})
    broker.add_device(dev, key)
    hb = HostBoard(str(tmp_path / "b6"), heap=HEAP, args=["--keepalive-s", "30"])
    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=True)
    gw.add_device(dev, key)
    try:
        hb.start()
        gw.wait_frame(dev, "boot", timeout_s=30)
        hb.hold(1200)
        gw.wait_frame(dev, "alarm", timeout_s=30)
        assert hb.ping()["ok"]  # the board stayed responsive while it waited
        log = _log(hb)
        assert "session 1 up" in log and "session 2 up" not in log, log[-1500:]  # no give-up
    finally:
        hb.stop()
        gw.close()
        proxy.close()
