"""The project's Mosquitto configuration, against a real Mosquitto: credentials, ACL, TLS, reload."""

import os
import queue
import stat

import pytest

from gateway.broker import ProjectBroker
from tools.testing.procs import wait_for

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
A, B = 0x2A, 0x2B


@pytest.mark.timeout(60)
def test_acl_denies_cross_device_publish_and_subscribe(project_broker, clients):
    project_broker.add_devices([(A, KEY_A), (B, KEY_B)])
    gw = clients(project_broker.port, *project_broker.gateway_credentials)
    assert gw.connect()
    assert gw.subscribe("fq/v1/+/up") == [1]
    b = clients(project_broker.port, *project_broker.device_credentials(B, KEY_B))
    assert b.connect()
    assert b.subscribe("fq/v1/0000002b/down") == [1]
    # A publishing on B's uplink or on any downlink reaches nobody. (Mosquitto 2.0.11 PUBACKs and
    # drops such a PUBLISH when its queues are bounded, as ours are; with max_queued_messages 0 it
    # disconnected the client instead.) One connection per login: the client id is the username,
    # so each forger runs alone.
    for topic in ("fq/v1/0000002b/up", "fq/v1/0000002b/down", "fq/v1/0000002a/down"):
        forger = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
        assert forger.connect()
        info = forger.client.publish(topic, b"forged", qos=1)
        wait_for(lambda: info.is_published() or forger.disconnected.is_set(), 10,
                 "broker to PUBACK or drop a device publishing on %s" % topic)
        forger.close()
    assert gw.messages.empty() and b.messages.empty()
    a = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    assert a.connect()
    # A may subscribe to B's downlink or to every downlink (Mosquitto 2.0 grants the SUBACK), but
    # the read ACL is checked on every delivery: nothing of B's ever reaches A (checked below).
    a.subscribe("fq/v1/0000002b/down")
    a.subscribe("fq/v1/+/down")
    mine = a
    mine.publish("fq/v1/0000002a/up", b"mine")
    assert gw.messages.get(timeout=5) == ("fq/v1/0000002a/up", b"mine")
    gw.client.publish("fq/v1/0000002b/down", b"for-b", qos=1)
    assert b.messages.get(timeout=5) == ("fq/v1/0000002b/down", b"for-b")
    with pytest.raises(queue.Empty):
        gw.messages.get(timeout=0.5)
    assert a.messages.empty()
    # ... while A's own downlink does reach A.
    gw.client.publish("fq/v1/0000002a/down", b"for-a", qos=1)
    assert a.messages.get(timeout=5) == ("fq/v1/0000002a/down", b"for-a")


@pytest.mark.timeout(60)
def test_wrong_password_and_unknown_device_refused(project_broker, clients):
    project_broker.add_device(A, KEY_A)
    bad = clients(project_broker.port, "0000002a", "0" * 32)
    assert not bad.connect()
    unknown = clients(project_broker.port, *project_broker.device_credentials(B, KEY_B))
    assert not unknown.connect()
    anon = clients(project_broker.port, None, None)
    assert not anon.connect()


@pytest.mark.timeout(60)
def test_revoke_reloads_without_dropping_others(project_broker, clients):
    project_broker.add_devices([(A, KEY_A), (B, KEY_B)])
    pid = project_broker.pid
    b = clients(project_broker.port, *project_broker.device_credentials(B, KEY_B))
    a = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    assert a.connect() and b.connect()
    b.subscribe("fq/v1/0000002b/down")
    project_broker.revoke_device(A)
    # The revoked device is dropped and cannot come back; B's session is untouched, same process.
    wait_for(a.disconnected.is_set, 10, "revoked device to be disconnected")
    again = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    assert not again.connect()
    assert not b.disconnected.is_set() and project_broker.pid == pid
    gw = clients(project_broker.port, *project_broker.gateway_credentials)
    assert gw.connect()
    gw.client.publish("fq/v1/0000002b/down", b"still-here", qos=1)
    assert b.messages.get(timeout=5) == ("fq/v1/0000002b/down", b"still-here")
    # Provisioning a new device also reloads without a restart.
    project_broker.add_device(0x2C, KEY_A)
    c = clients(project_broker.port, *project_broker.device_credentials(0x2C, KEY_A))
    assert c.connect() and not b.disconnected.is_set()


@pytest.mark.timeout(60)
def test_tls_listener_with_local_ca(project_broker, clients):
    project_broker.add_device(A, KEY_A)
    a = clients(project_broker.tls_port, *project_broker.device_credentials(A, KEY_A), tls_ca=project_broker.ca_path)
    assert a.connect()
    for name in ("ca.key", "server.key", "gateway.secret", "passwd"):
        assert stat.S_IMODE(os.stat(os.path.join(project_broker.workdir, name)).st_mode) == 0o600


@pytest.mark.timeout(60)
def test_reload_from_another_process_via_pid_file(project_broker, clients):
    # e.g. `fengqiao gateway device revoke` from a shell while the gateway runs the broker
    other = ProjectBroker(project_broker.workdir, port=project_broker.port, tls_port=project_broker.tls_port)
    other.add_device(A, KEY_A)
    a = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    assert a.connect()


@pytest.mark.timeout(60)
def test_start_replaces_a_broker_left_by_a_killed_gateway(tmp_path, clients):
    first = ProjectBroker(tmp_path / "b").start()
    runner = first._proc
    orphan = runner.proc                      # the gateway that ran it died: nobody stops it
    first._proc = None
    second = ProjectBroker(tmp_path / "b", port=first.port, tls_port=first.tls_port).start()
    try:
        orphan.wait(10)                       # stopped by the new start (reaped here: our child)
        assert second.pid != orphan.pid and second.running()
        second.add_device(A, KEY_A)
        assert clients(second.port, *second.device_credentials(A, KEY_A)).connect()
    finally:
        second.stop()
        runner._log.close()


@pytest.mark.timeout(60)
def test_client_id_is_the_username_no_takeover(project_broker, clients):
    """Issue 13: another device's client id, or the gateway's, takes over nobody's session."""
    project_broker.add_devices([(A, KEY_A), (B, KEY_B)])
    gw = clients(project_broker.port, *project_broker.gateway_credentials, client_id="fengqiao-gateway", clean=False)
    assert gw.connect() and gw.subscribe("fq/v1/+/up") == [1]
    b = clients(project_broker.port, *project_broker.device_credentials(B, KEY_B), client_id="0000002b")
    assert b.connect()
    # A claims B's client id, then the gateway's with a persistent session, then with a clean one.
    for client_id, clean in (("0000002b", True), ("fengqiao-gateway", False), ("gateway", True)):
        thief = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A), client_id=client_id, clean=clean)
        assert thief.connect()
        assert not thief.session_present, "A got the session of %r" % client_id
        thief.publish("fq/v1/0000002a/up", client_id.encode())
        thief.close()
    # Nobody was kicked, and the gateway's session kept receiving all along.
    assert not b.disconnected.is_set() and not gw.disconnected.is_set()
    got = [gw.messages.get(timeout=5)[1] for _ in range(3)]
    assert got == [b"0000002b", b"fengqiao-gateway", b"gateway"]
    # A tool login reads uplinks but cannot write downlinks, and does not disturb the gateway.
    tool = clients(project_broker.port, *project_broker.tool_credentials("observer"), client_id="gateway")
    assert tool.connect() and tool.subscribe("fq/v1/+/up") == [1]
    b.subscribe("fq/v1/0000002b/down")
    tool.publish("fq/v1/0000002b/down", b"forged")
    b.publish("fq/v1/0000002b/up", b"seen")
    assert tool.messages.get(timeout=5) == ("fq/v1/0000002b/up", b"seen")
    assert gw.messages.get(timeout=5) == ("fq/v1/0000002b/up", b"seen")
    with pytest.raises(queue.Empty):
        b.messages.get(timeout=0.5)
    assert not gw.disconnected.is_set()


@pytest.mark.timeout(60)
def test_retained_publish_refused(project_broker, clients):
    """SPEC section 6: no retained messages; the broker drops a client that sends one."""
    project_broker.add_device(A, KEY_A)
    a = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    assert a.connect()
    a.client.publish("fq/v1/0000002a/up", b"sticky", qos=1, retain=True)
    wait_for(a.disconnected.is_set, 10, "broker to drop a client publishing a retained message")
    late = clients(project_broker.port, *project_broker.tool_credentials("late"))
    assert late.connect() and late.subscribe("fq/v1/+/up") == [1]
    with pytest.raises(queue.Empty):
        late.messages.get(timeout=0.5)


def test_password_hashes_iterations_and_check():
    from gateway import broker as gb

    h = gb.hash_password("s3cret")
    assert h.startswith("$7$%d$" % gb.DEVICE_HASH_ITERATIONS) and gb.DEVICE_HASH_ITERATIONS >= 1000
    assert gb.check_password("s3cret", h) and not gb.check_password("s3creT", h)
    assert not gb.check_password("s3cret", "") and not gb.check_password("s3cret", "$6$1$a$b")


@pytest.mark.timeout(60)
def test_service_logins_use_the_high_iteration_count(project_broker):
    from gateway import broker as gb

    project_broker.tool_credentials("bench")
    with open(project_broker.passwd_path) as f:
        entries = dict(line.strip().split(":", 1) for line in f if line.strip())
    for user in ("gateway", "tool-bench"):
        assert entries[user].split("$")[2] == str(gb.SERVICE_HASH_ITERATIONS)
    # hashes of an older count (210,000 before 2026-12-07) are replaced on the next write / login
    user, password = project_broker.tool_credentials("bench")
    entries[user] = gb.hash_password(password, iterations=210000)
    entries["gateway"] = gb.hash_password(project_broker.gateway_credentials[1], iterations=210000)
    with open(project_broker.passwd_path, "w") as f:
        f.write("".join("%s:%s\n" % kv for kv in entries.items()))
    assert project_broker.tool_credentials("bench") == (user, password)
    with open(project_broker.passwd_path) as f:
        entries = dict(line.strip().split(":", 1) for line in f if line.strip())
    for user in ("gateway", "tool-bench"):
        assert entries[user].split("$")[2] == str(gb.SERVICE_HASH_ITERATIONS)
    assert gb.SERVICE_HASH_ITERATIONS >= 10000 and gb.DEVICE_HASH_ITERATIONS >= 1000
    with pytest.raises(gb.BrokerError):
        project_broker.tool_credentials("Bad Name")
    assert project_broker.devices() == []


@pytest.mark.timeout(60)
def test_hold_cuts_a_device_off_and_release_lets_it_back(project_broker, clients):
    project_broker.add_devices([(A, KEY_A), (B, KEY_B)])
    a = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    b = clients(project_broker.port, *project_broker.device_credentials(B, KEY_B))
    assert a.connect() and b.connect()
    assert project_broker.hold_devices({A: {"reason": "flood"}}) == [A]
    wait_for(a.disconnected.is_set, 10, "held device to be disconnected")
    assert not clients(project_broker.port, *project_broker.device_credentials(A, KEY_A)).connect()
    # re-provisioning (the gateway's start syncs the registry into the broker) keeps it held
    project_broker.add_devices([(A, KEY_A), (B, KEY_B)])
    assert project_broker.held() == {A: {"reason": "flood"}} and project_broker.devices() == ["0000002b"]
    assert not clients(project_broker.port, *project_broker.device_credentials(A, KEY_A)).connect()
    assert not b.disconnected.is_set()
    assert ProjectBroker(project_broker.workdir).release_devices([A, B]) == [A]   # from a shell
    assert clients(project_broker.port, *project_broker.device_credentials(A, KEY_A)).connect()
    assert project_broker.held() == {}
    # a held device that is revoked is gone for good
    project_broker.hold_devices({A: {}})
    project_broker.revoke_device(A)
    assert project_broker.release_devices([A]) == [] and project_broker.devices() == ["0000002b"]


def test_the_shipped_config_binds_client_ids_refuses_retain_and_bounds_queues(tmp_path):
    """Issue 13, as Mosquitto reads it: every listener binds the client id to the username; no
    retained messages; bounded queues and packets (the values the flood guard's allowance uses)."""
    b = ProjectBroker(tmp_path / "b").setup()
    lines = b.config_text().splitlines()
    settings = [line for line in lines if line and not line.startswith("#")]
    listeners = [i for i, line in enumerate(lines) if line.startswith("listener ")]
    assert len(listeners) == 2
    for i in listeners:
        assert lines[i + 1] == "use_username_as_clientid true"
    for want in ("retain_available false", "max_inflight_messages 1000", "max_queued_messages 10000",
                 "max_queued_bytes %d" % (16 * 1024 * 1024), "max_packet_size 2048", "allow_anonymous false"):
        assert want in settings, want
    assert (b.inflight, b.queued) == (1000, 10000)


def _stalled_gateway(broker):
    """The gateway's login subscribed to every uplink, then never reading its socket (a gateway
    stuck in a long commit, or gone without closing): what the broker keeps for it is bounded."""
    import socket
    import struct

    def field(b):
        return struct.pack("!H", len(b)) + b
    user, password = broker.gateway_credentials
    # clean session, empty client id (the broker uses the username), keepalive 600 s
    body = field(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 600) + field(b"") + field(user.encode()) \
        + field(password.encode())
    sk = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    try:
        sk.sendall(bytes([0x10, len(body)]) + body)
        assert sk.recv(4) == b"\x20\x02\x00\x00"
        sub = struct.pack("!H", 1) + field(b"fq/v1/+/up") + b"\x01"
        sk.sendall(bytes([0x82, len(sub)]) + sub)
        assert sk.recv(5) == b"\x90\x03\x00\x01\x01"
    except BaseException:
        sk.close()
        raise
    return sk


@pytest.mark.timeout(120)
def test_broker_memory_stays_bounded_while_a_device_floods_a_stalled_gateway(project_broker):
    """Issue 13: one device publishing QoS 0 at full loopback speed (mosquitto_pub) while the
    gateway's login does not read. Measured 2026-12-07 (load average 5): 500,000 messages took
    the broker to 10.7 MB with the shipped bounds, to 64 MB (growing with the count) without."""
    import subprocess
    import time

    from tools.bench_flood import Flooder, _rss_kb

    project_broker.add_device(A, KEY_A)
    gw = _stalled_gateway(project_broker)
    flood = Flooder(project_broker.port, *project_broker.device_credentials(A, KEY_A), "fq/v1/0000002a/up",
                    count=500_000)
    peak = 0
    deadline = time.monotonic() + 60
    try:
        while flood.running():        # RSS sampled every 20 ms until the flooder has sent them all
            peak = max(peak, _rss_kb(project_broker.pid))
            assert time.monotonic() < deadline, "the flooder still running after 60 s"
            try:
                flood.proc.wait(0.02)
            except subprocess.TimeoutExpired:
                pass
        assert flood.proc.returncode == 0, "the flooder did not send its 500,000 messages"
        peak = max(peak, _rss_kb(project_broker.pid))
    finally:
        flood.stop()
        gw.close()
    assert 0 < peak < 32 * 1024, "broker peak RSS %d kB" % peak


@pytest.mark.timeout(60)
def test_the_broker_keeps_at_most_inflight_plus_queued_for_the_gateway_while_it_is_away(tmp_path, clients):
    """What the flood guard's backlog allowance counts on (gateway/quarantine.py): a device's
    QoS 1 flood while the gateway's persistent session is offline leaves at most
    max_inflight_messages + max_queued_messages for it (small bounds here, same options)."""
    from tools.bench_flood import Flooder

    broker = ProjectBroker(tmp_path / "b", inflight=20, queued=200).start()
    try:
        broker.add_device(A, KEY_A)
        gw = clients(broker.port, *broker.gateway_credentials, clean=False)
        assert gw.connect() and gw.subscribe("fq/v1/+/up") == [1]
        gw.close()
        flood = Flooder(broker.port, *broker.device_credentials(A, KEY_A), "fq/v1/0000002a/up", count=5000, qos=1)
        try:
            wait_for(lambda: not flood.running(), 40, "the QoS 1 flooder to send its 5,000 messages")
            assert flood.proc.returncode == 0
        finally:
            flood.stop()
        back = clients(broker.port, *broker.gateway_credentials, clean=False)
        assert back.connect() and back.session_present
        # a last message after the backlog: once it is in, everything the broker kept is too
        a = clients(broker.port, *broker.device_credentials(A, KEY_A))
        assert a.connect()
        a.publish("fq/v1/0000002a/up", b"end")
        kept = 0
        while back.messages.get(timeout=10)[1] != b"end":   # queue.Empty: the last message never came
            kept += 1
        assert 0 < kept <= 20 + 200, kept
    finally:
        broker.stop()
