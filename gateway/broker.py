"""The project's Mosquitto: TLS with a local CA, per-device passwords, per-device ACL, reload on change.

    broker = ProjectBroker(workdir).start()     # creates CA, server cert, gateway password on first run
    broker.port          # plain MQTT on 127.0.0.1 only (tests, bench, the gateway itself); None if disabled
    broker.tls_port      # MQTT over TLS (what devices use); broker.ca_path = the CA to trust
    broker.add_device(device_id, key)   # 32-byte key -> password file entry (SPEC section 2), reload
    broker.revoke_device(device_id)     # entry removed, reload; its open connection is dropped
    broker.gateway_credentials          # ("gateway", password) — reads fq/v1/+/up, writes fq/v1/+/down
    broker.device_credentials(device_id, key) -> (username, password)
    broker.stop()                       # also a context manager: `with ProjectBroker(d) as b: ...`

Files in `workdir` (all created once, then reused): ca.pem/ca.key, server.pem/server.key,
gateway.secret (0600), passwd (Mosquitto `$7$` PBKDF2-SHA512 hashes, written by us, atomically),
acl, mosquitto.conf, mosquitto.pid, mosquitto.log, mosquitto.db (broker persistence).

Restart after a crash: a Mosquitto left running by a gateway killed with -9 is found through
mosquitto.pid (and /proc: it must be Mosquitto on this workdir's config) and stopped, then a
fresh one starts (SIGTERM lets it save its queues first).

Reload: the password and ACL files are rewritten whole (temp file + rename) and Mosquitto gets
SIGHUP, which re-reads them without a restart; other clients stay connected. A broker started by
another process (e.g. `fengqiao gateway run`) is found through mosquitto.pid, so `fengqiao gateway
device revoke` run from a shell reloads the running broker.

Broker settings that matter for "nothing acknowledged is lost": `max_queued_messages 0` (Mosquitto's
default of 1000 silently drops messages queued for a slow or reconnecting gateway), persistence on,
and a large in-flight window so manual acks after a batch commit do not throttle the gateway.
"""

import base64
import datetime
import hashlib
import ipaddress
import os
import pwd
import secrets
import signal
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol import frame as pframe
from tools.testing.mosquitto import MosquittoProcess
from tools.testing.procs import free_port

GATEWAY_USER = "gateway"

ACL_TEXT = """\
# Written by gateway/broker.py (SPEC section 6). Anything not granted here is denied.
# A device (username = its 8-hex-digit id) publishes only its uplink, reads only its downlink.
pattern write fq/v1/%u/up
pattern read fq/v1/%u/down

user gateway
topic read fq/v1/+/up
topic write fq/v1/+/down
topic read $SYS/broker/clients/connected
"""

CONF_TEMPLATE = """\
# Written by gateway/broker.py; regenerated on every start — edit the gateway config instead.
per_listener_settings false
# Run as the gateway's own user (it owns the 0600 key and password files); as root Mosquitto
# would otherwise switch to user "mosquitto" and be unable to read them.
user {user}
allow_anonymous false
password_file {workdir}/passwd
acl_file {workdir}/acl
persistence true
persistence_location {workdir}/
persistence_file mosquitto.db
autosave_interval 30
# 0 = no limit: never drop QoS 1 messages queued for the gateway (default 1000 drops silently).
max_queued_messages 0
max_inflight_messages {inflight}
# Frames are at most 256 bytes: a client sending a packet over 2 KiB is disconnected by the
# broker (the gateway still sees, counts and rejects frames of 257 bytes .. 2 KiB as Oversize).
max_packet_size 2048
set_tcp_nodelay true
# $SYS every 2 s: the gateway reads clients/connected for /metrics
sys_interval 2
log_type error
log_type warning
log_type notice
connection_messages true
{listeners}"""


class BrokerError(RuntimeError):
    """The broker's files or process could not be set up or signalled."""


def hash_password(password, salt=None, iterations=101):
    """Mosquitto 2.x password-file hash: $7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return "$7$%d$%s$%s" % (iterations, base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def _write_atomic(path, text, mode=0o600):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _alive(pid):
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ProjectBroker:
    def __init__(self, workdir, port=None, tls_port=None, bind="127.0.0.1", hostnames=("localhost",),
                 plain_listener=True, inflight=1000):
        self.workdir = os.path.abspath(str(workdir))
        os.makedirs(self.workdir, mode=0o700, exist_ok=True)
        self.port = (port or free_port()) if plain_listener else None
        self.tls_port = tls_port or free_port()
        self.bind = bind
        self.hostnames = tuple(hostnames)
        self.inflight = inflight
        self.ca_path = os.path.join(self.workdir, "ca.pem")
        self.passwd_path = os.path.join(self.workdir, "passwd")
        self.acl_path = os.path.join(self.workdir, "acl")
        self.pid_path = os.path.join(self.workdir, "mosquitto.pid")
        self._proc = None

    # -- files ---------------------------------------------------------------------------------

    def setup(self):
        """Create what is missing: CA, server certificate, gateway secret, passwd, acl."""
        if not os.path.exists(self.ca_path):
            self._make_certificates()
        secret_path = os.path.join(self.workdir, "gateway.secret")
        if not os.path.exists(secret_path):
            _write_atomic(secret_path, secrets.token_hex(24) + "\n")
        if not os.path.exists(self.passwd_path):
            self._write_passwd({})
        _write_atomic(self.acl_path, ACL_TEXT, 0o644)
        return self

    @property
    def gateway_credentials(self):
        with open(os.path.join(self.workdir, "gateway.secret")) as f:
            return GATEWAY_USER, f.read().strip()

    @staticmethod
    def device_credentials(device_id, key):
        return pframe.device_id_text(device_id), pframe.mqtt_password(key)

    def _read_passwd(self):
        entries = {}
        if os.path.exists(self.passwd_path):
            with open(self.passwd_path) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#") and ":" in line:
                        user, h = line.split(":", 1)
                        entries[user] = h
        return entries

    def _write_passwd(self, entries):
        entries = dict(entries)
        entries[GATEWAY_USER] = hash_password(self.gateway_credentials[1])
        _write_atomic(self.passwd_path, "".join("%s:%s\n" % kv for kv in sorted(entries.items())))

    def add_device(self, device_id, key, reload=True):
        """Allow `device_id` to connect with the password derived from `key` (replaces an old one)."""
        self.add_devices([(device_id, key)], reload)

    def add_devices(self, pairs, reload=True):
        """Many devices with one file write and one reload (benchmarks provision hundreds)."""
        entries = self._read_passwd()
        for device_id, key in pairs:
            user, password = self.device_credentials(device_id, key)
            entries[user] = hash_password(password)
        self._write_passwd(entries)
        if reload:
            self.reload()

    def revoke_device(self, device_id, reload=True):
        """Remove the device's credentials; it cannot connect again (and is disconnected on reload)."""
        entries = self._read_passwd()
        entries.pop(pframe.device_id_text(device_id), None)
        self._write_passwd(entries)
        if reload:
            self.reload()

    def devices(self):
        return sorted(u for u in self._read_passwd() if u != GATEWAY_USER)

    def _make_certificates(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fengqiao gateway local CA")])
        ca = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        srv_key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(h) for h in self.hostnames] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        srv = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.hostnames[0])]))
            .issuer_name(ca_name).public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        nokey = serialization.NoEncryption()
        pkcs8 = serialization.PrivateFormat.PKCS8
        _write_atomic(os.path.join(self.workdir, "ca.key"), ca_key.private_bytes(pem, pkcs8, nokey).decode())
        _write_atomic(os.path.join(self.workdir, "server.key"), srv_key.private_bytes(pem, pkcs8, nokey).decode())
        _write_atomic(os.path.join(self.workdir, "server.pem"), srv.public_bytes(pem).decode(), 0o644)
        _write_atomic(self.ca_path, ca.public_bytes(pem).decode(), 0o644)

    def config_text(self):
        listeners = []
        if self.port:
            listeners.append("listener %d 127.0.0.1\n" % self.port)
        listeners.append(
            "listener %d %s\ncafile %s/ca.pem\ncertfile %s/server.pem\nkeyfile %s/server.key\n"
            "tls_version tlsv1.2\n" % (self.tls_port, self.bind, self.workdir, self.workdir, self.workdir))
        return CONF_TEMPLATE.format(workdir=self.workdir, user=pwd.getpwuid(os.getuid()).pw_name, inflight=self.inflight, listeners="".join(listeners))

    # -- process -------------------------------------------------------------------------------

    def start(self, timeout_s=10):
        self.setup()
        self._stop_orphan()
        # MosquittoProcess formats {placeholders}: our text is already final, so escape braces.
        text = self.config_text().replace("{", "{{").replace("}", "}}")
        self._proc = MosquittoProcess(self.workdir, text, port=self.port or self.tls_port)
        self._proc.start(timeout_s)
        _write_atomic(self.pid_path, "%d\n" % self._proc.proc.pid, 0o644)
        return self

    def _stop_orphan(self):
        """A gateway killed with -9 leaves its Mosquitto running (it saves its queues on SIGTERM):
        stop that broker, found by mosquitto.pid and checked to be Mosquitto on OUR config file,
        so this start can bind the same ports with the current configuration."""
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            return False
        conf = os.path.join(self.workdir, "mosquitto.conf").encode()
        if not argv or not argv[0].endswith(b"mosquitto") or conf not in argv:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline += 5
            time.sleep(0.05)
        return True

    @property
    def pid(self):
        if self._proc and self._proc.proc:
            return self._proc.proc.pid
        try:
            with open(self.pid_path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def running(self):
        pid = self.pid
        if pid is None:
            return False
        if self._proc and self._proc.proc:
            return self._proc.proc.poll() is None
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def reload(self):
        """SIGHUP the running broker (ours or the one in mosquitto.pid); no-op when none runs."""
        if self._proc and self._proc.proc:
            self._proc.reload()
            return True
        if self.running():
            os.kill(self.pid, signal.SIGHUP)
            return True
        return False

    def stop(self):
        if self._proc:
            self._proc.stop()
            self._proc = None
            try:
                os.unlink(self.pid_path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
