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
    a = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    b = clients(project_broker.port, *project_broker.device_credentials(B, KEY_B))
    assert a.connect() and b.connect()
    assert b.subscribe("fq/v1/0000002b/down") == [1]
    # A may subscribe to B's downlink or to every downlink (Mosquitto 2.0 grants the SUBACK), but
    # the read ACL is checked on every delivery: nothing of B's ever reaches A (checked below).
    a.subscribe("fq/v1/0000002b/down")
    a.subscribe("fq/v1/+/down")
    # A publishing on B's uplink or on any downlink reaches nobody, and Mosquitto 2.0 drops A's
    # connection for it (MQTT 3.1.1 has no way to refuse one PUBLISH).
    for topic in ("fq/v1/0000002b/up", "fq/v1/0000002b/down", "fq/v1/0000002a/down"):
        forger = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
        assert forger.connect()
        forger.client.publish(topic, b"forged", qos=1)
        wait_for(forger.disconnected.is_set, 10, "broker to drop a device publishing on %s" % topic)
    assert gw.messages.empty() and b.messages.empty()
    mine = clients(project_broker.port, *project_broker.device_credentials(A, KEY_A))
    assert mine.connect()
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
