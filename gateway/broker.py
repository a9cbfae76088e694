"""The project's Mosquitto: TLS with a local CA, per-device passwords, per-device ACL, reload on change.

    broker = ProjectBroker(workdir).start()     # creates CA, server cert, gateway password on first run
    broker.port          # plain MQTT on 127.0.0.1 only (tests, bench, the gateway itself); None if disabled
    broker.tls_port      # MQTT over TLS (what devices use); broker.ca_path = the CA to trust
    broker.add_device(device_id, key)   # 32-byte key -> password file entry (SPEC section 2), reload
    broker.revoke_device(device_id)     # entry removed, reload; its open connection is dropped
    broker.gateway_credentials          # ("gateway", password) — reads fq/v1/+/up, writes fq/v1/+/down
    broker.device_credentials(device_id, key) -> (username, password)
    broker.hold_devices({device_id: info})  # quarantine: cut off like revoke, hash kept in held.json
    broker.release_devices([device_id])     # back into the password file, reload; broker.held() -> {id: info}
    broker.stop()                       # also a context manager: `with ProjectBroker(d) as b: ...`

Files in `workdir` (all created once, then reused): ca.pem/ca.key, server.pem/server.key,
gateway.secret (0600), passwd (Mosquitto `$7$` PBKDF2-SHA512 hashes, written by us, atomically),
held.json (quarantined logins: their hashes and the quarantine's info), acl, mosquitto.conf, mosquitto.pid, mosquitto.log, mosquitto.db (broker persistence).

Restart after a crash: a Mosquitto left running by a gateway killed with -9 is found through
mosquitto.pid (and /proc: it must be Mosquitto on this workdir's config) and stopped, then a
fresh one starts (SIGTERM lets it save its queues first).

Reload: the password and ACL files are rewritten whole (temp file + rename) and Mosquitto gets
SIGHUP, which re-reads them without a restart; other clients stay connected. A broker started by
another process (e.g. `fengqiao gateway run`) is found through mosquitto.pid, so `fengqiao gateway
device revoke` run from a shell reloads the running broker.

Hardening (issue 13): the client id is the username on every listener (`use_username_as_clientid`),
so no login can take over or kick another's session; retained messages are refused
(`retain_available false`); the broker's queues are bounded (`max_queued_messages`,
`max_queued_bytes`, `max_inflight_messages`): a message dropped there was not acknowledged by the
gateway, so its device still holds it and resends it. A flooding device is cut off like a revoked
one (its password entry removed, SIGHUP; gateway/quarantine.py). Tools log in as `tool-<name>`
(`broker.tool_credentials(name)`: reads uplinks only), never as the gateway.
"""

import base64
import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import pwd
import secrets
import signal
import socket
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

# A tool login (`tool-<name>`: a benchmark's or an operator's observer) may only watch uplinks.
TOOL_ACL = """
user {user}
topic read fq/v1/+/up
topic read $SYS/broker/clients/connected
"""
TOOL_PREFIX = "tool-"

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
# Snapshot every second (time-based, not on changes): after a kill -9 the gateway's session and
# every message older than ~1 s are still there. On changes, the snapshot count grows with the
# message rate and each one writes the whole queue: measured 2026-12-06 (Mosquitto 2.0.11),
# autosave_on_changes with interval 1 cost 191 us/msg, with 100 35 us/msg once 20,000 were
# queued; autosave_interval 1 costs 9 us/msg like 30 did, and ~10 ms/s with 100,000 queued
# (an 11 MB snapshot). What the last second may lose, devices resend (they keep each record until
# its own ack) and the gateway's replay window accepts (SPEC section 4).
autosave_on_changes false
autosave_interval 1
# Bounded memory (issue 13). Per subscriber (in practice: the gateway), Mosquitto holds at most
# max_inflight_messages QoS 1 messages in flight plus max_queued_messages / max_queued_bytes more,
# and at most max_queued_messages QoS 0 packets waiting on its socket: beyond that it drops. This
# bounds both the broker's memory under a flood (a QoS 0 flood alone once took it to 230 MB) and
# how many messages can sit in front of an alarm. What is dropped is never lost for good: the
# gateway has not acknowledged it, so the device still holds it and resends it. (Measured
# 2026-12-07, a gateway login that stops reading, 500,000 QoS 0 flood messages: RSS 10.7 MB with
# these bounds, 64 MB without; test_broker.py checks it.) Mosquitto 2.0 has no option to limit
# a client's message rate: that limit is the gateway's (token bucket, flood guard and cut-off,
# gateway/quarantine.py), which removes a flooder's login like a revocation.
max_queued_messages {queued}
max_queued_bytes {queued_bytes}
max_inflight_messages {inflight}
# SPEC section 6: no retained messages. A client that publishes one is disconnected.
retain_available {retain}
# Frames are at most 256 bytes: a client sending a packet over 2 KiB is disconnected by the
# broker (the gateway still sees, counts and rejects frames of 257 bytes .. 2 KiB as Oversize).
max_packet_size 2048
set_tcp_nodelay true
# $SYS every 2 s: the gateway reads clients/connected for /metrics
sys_interval 2
log_type error
log_type warning
log_type notice
# information: for "Reloading config.", which confirms each SIGHUP (ProjectBroker.reload)
log_type information
connection_messages true
{listeners}"""

# After every `listener` line (a per-listener option in Mosquitto 2.0): the client id IS the
# username, so nobody can take over another login's session or kick it off by reusing its client
# id (a device with the gateway's id, or with another device's id). Not reloaded on SIGHUP.
LISTENER_OPTIONS = "use_username_as_clientid true\n"


class BrokerError(RuntimeError):
    """The broker's files or process could not be set up or signalled."""


# PBKDF2-SHA512 iterations of the password file ($7$ hashes; Mosquitto 2.0 reads the count from
# each hash, mosquitto_passwd 2.0.11 always writes 101). What a count costs here: Mosquitto checks
# a hash on every CONNECT, and on every reload (SIGHUP: a device added, revoked, rotated,
# quarantined or released) it re-checks the password of EVERY connected login, in its only thread,
# so the whole broker (everyone's alarms) stands still for the sum. Measured 2026-12-07 on the
# 2-core machine (Mosquitto 2.0.11, idle, reload until its main loop answers; /tmp script, figures
# in the commit): gateway at 210,000 alone 124-127 ms per reload; 300 devices at 1,000 add 170 ms
# (0.57 ms each); 2,000 devices at 1,000: 1.27-1.33 s per reload (at 101: 0.26-0.31 s). Under a
# ten-device flood the gateway's 210,000 alone froze the broker 0.3-0.9 s per reload.
# The counts follow NIST SP 800-63B 5.1.1.2 ("as large as verification server performance will
# allow, typically at least 10,000"):
# - devices: 1,000, the minimum of NIST SP 800-132 (10x Mosquitto's 101). Every connected device
#   is re-hashed on every reload, so the count multiplies by the township's size: at 5,000
#   devices ~3 s per reload at 1,000, ~30 s at 10,000. A power cut's reconnect of 5,000 devices
#   costs 2.5 s at 1,000.
# - the gateway and tool logins (a handful): 10,000, SP 800-63B's figure: 6-8 ms per reload.
#   Not OWASP's 210,000 for SHA-512: that is 0.12 s per reload idle and 0.3-0.9 s under a flood
#   (the reload that cuts flooders off), for nothing an attacker notices.
# Why the counts are not the protection: every password here is a random secret (devices: 128
# bits derived from the device key, SPEC section 2; gateway and tools: 192 bits, token_hex(24)).
# Iterations slow down guessing a human-chosen password; guessing a 2^128 space is out of reach
# at 1 iteration or 210,000. A hash count changed later is applied on the next write (the
# gateway's and tools' hashes at gateway start / tool login, a device's when it is added again).
DEVICE_HASH_ITERATIONS = 1000
SERVICE_HASH_ITERATIONS = 10000


RELOAD_MARK = b"Reloading config."   # logged at `log_type information` when a SIGHUP is acted on
RELOAD_RESEND_S = 1.0
RELOAD_CONFIRM_S = 30.0


# An anonymous MQTT 3.1.1 CONNECT (clean session, empty client id): refused at once (no password
# hash is checked), and answered only by Mosquitto's main loop, so its CONNACK proves that the
# reload before it has finished.
_PROBE_CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0])


def _main_loop_answers(port, timeout_s):
    """True once the broker on 127.0.0.1:port answers a CONNECT (with any CONNACK)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(_PROBE_CONNECT)
            return s.recv(4)[:1] == b"\x20"
    except OSError:
        return False


def _logged_since(path, offset, mark):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return mark in f.read()
    except OSError:
        return False


def hash_password(password, salt=None, iterations=DEVICE_HASH_ITERATIONS):
    """Mosquitto 2.x password-file hash: $7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return "$7$%d$%s$%s" % (iterations, base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def check_password(password, hashed):
    """True when `hashed` (a $7$ line of ours) is the hash of `password`."""
    try:
        _, seven, iterations, salt, digest = hashed.split("$")
        if seven != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations), 64)
    except ValueError:
        return False
    return secrets.compare_digest(got, base64.b64decode(digest))


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
                 plain_listener=True, inflight=1000, queued=10000, queued_bytes=16 * 1024 * 1024,
                 retain_available=False):
        self.workdir = os.path.abspath(str(workdir))
        os.makedirs(self.workdir, mode=0o700, exist_ok=True)
        self.port = (port or free_port()) if plain_listener else None
        self.tls_port = tls_port or free_port()
        self.bind = bind
        self.hostnames = tuple(hostnames)
        self.inflight = inflight
        self.queued = queued
        self.queued_bytes = queued_bytes
        self.retain_available = retain_available   # True only in the test of the gateway's own check
        self.ca_path = os.path.join(self.workdir, "ca.pem")
        self.passwd_path = os.path.join(self.workdir, "passwd")
        self.acl_path = os.path.join(self.workdir, "acl")
        self.held_path = os.path.join(self.workdir, "held.json")
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
        self._write_acl()
        return self

    def _write_acl(self):
        tools = sorted(u for u in self._read_passwd() if u.startswith(TOOL_PREFIX))
        _write_atomic(self.acl_path, ACL_TEXT + "".join(TOOL_ACL.format(user=u) for u in tools), 0o644)

    def tool_credentials(self, name):
        """(username, password) of the tool login `tool-<name>` (created on first use, with its own
        0600 secret file): reads uplinks only. Tools never use the gateway's login, whose client id
        (= username) would take over the gateway's session."""
        if not name or len(name) > 32 or not all(c.isdigit() or "a" <= c <= "z" or c == "-" for c in name):
            raise BrokerError("tool name %r: 1-32 characters a-z, 0-9 or -" % name)
        user = TOOL_PREFIX + name
        path = os.path.join(self.workdir, "%s.secret" % user)
        if not os.path.exists(path):
            _write_atomic(path, secrets.token_hex(24) + "\n")
        with open(path) as f:
            password = f.read().strip()
        entries = self._read_passwd()
        old = entries.get(user, "")
        if not check_password(password, old) or old.split("$")[2:3] != [str(SERVICE_HASH_ITERATIONS)]:
            entries[user] = hash_password(password, iterations=SERVICE_HASH_ITERATIONS)
            self._write_passwd(entries)
            self._write_acl()
            self.reload()
        return user, password

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

    @contextlib.contextmanager
    def _locked(self):
        """The password and held files are read-modified-written by the gateway (quarantine) and by
        commands run from a shell (`fengqiao device release`, revoke): one at a time."""
        with open(os.path.join(self.workdir, "passwd.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_held(self):
        try:
            with open(self.held_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BrokerError("cannot read %s: %s" % (self.held_path, exc)) from exc

    def _write_passwd(self, entries):
        entries = dict(entries)
        # A held (quarantined) login stays out of the password file; a new hash for it (a key
        # rotation while it is held) is kept with it for its release.
        held = self._read_held()
        moved = [u for u in held if u in entries]
        for user in moved:
            held[user]["hash"] = entries.pop(user)
        if moved:
            _write_atomic(self.held_path, json.dumps(held, sort_keys=True) + "\n")
        old = entries.get(GATEWAY_USER, "")
        # the gateway secret never changes: keep its hash once it has the current count
        if old.split("$")[2:3] != [str(SERVICE_HASH_ITERATIONS)]:
            entries[GATEWAY_USER] = hash_password(self.gateway_credentials[1], iterations=SERVICE_HASH_ITERATIONS)
        _write_atomic(self.passwd_path, "".join("%s:%s\n" % kv for kv in sorted(entries.items())))

    def add_device(self, device_id, key, reload=True):
        """Allow `device_id` to connect with the password derived from `key` (replaces an old one)."""
        self.add_devices([(device_id, key)], reload)

    def add_devices(self, pairs, reload=True):
        """Many devices with one file write and one reload (benchmarks provision hundreds)."""
        with self._locked():
            self._add_devices(pairs)
        if reload:
            self.reload()

    def _add_devices(self, pairs):
        entries = self._read_passwd()
        for device_id, key in pairs:
            user, password = self.device_credentials(device_id, key)
            entries[user] = hash_password(password)
        self._write_passwd(entries)

    def revoke_device(self, device_id, reload=True):
        """Remove the device's credentials; it cannot connect again (and is disconnected on reload)."""
        user = pframe.device_id_text(device_id)
        with self._locked():
            held = self._read_held()
            if held.pop(user, None) is not None:   # a revoked device is never released
                _write_atomic(self.held_path, json.dumps(held, sort_keys=True) + "\n")
            entries = self._read_passwd()
            entries.pop(user, None)
            self._write_passwd(entries)
        if reload:
            self.reload()

    def hold_devices(self, infos, reload=True):
        """Quarantine: {device_id: info (JSON-able dict)}. Each login leaves the password file (its
        hash is kept in held.json with `info`) and the reload drops its connection, as revoke does.
        Returns the ids that were newly held (a device already held only gets its info updated)."""
        new = []
        with self._locked():
            held = self._read_held()
            entries = self._read_passwd()
            for device_id, info in infos.items():
                user = pframe.device_id_text(device_id)
                if user not in held:
                    if user not in entries:
                        continue            # revoked or unknown: nothing to hold
                    new.append(device_id)
                held[user] = dict(info, hash=entries.pop(user, None) or held.get(user, {}).get("hash"))
            _write_atomic(self.held_path, json.dumps(held, sort_keys=True) + "\n")
            self._write_passwd(entries)
        if reload and new:
            self.reload()
        return new

    def release_devices(self, device_ids, reload=True):
        """End quarantine: the kept hash goes back into the password file. Returns the released ids."""
        done = []
        with self._locked():
            held = self._read_held()
            entries = self._read_passwd()
            for device_id in device_ids:
                item = held.pop(pframe.device_id_text(device_id), None)
                if item is not None:
                    if item.get("hash"):
                        entries[pframe.device_id_text(device_id)] = item["hash"]
                    done.append(device_id)
            if done:
                _write_atomic(self.held_path, json.dumps(held, sort_keys=True) + "\n")
                self._write_passwd(entries)
        if reload and done:
            self.reload()
        return done

    def held(self):
        """{device_id: info} of the quarantined devices (hashes left out)."""
        return {int(u, 16): {k: v for k, v in item.items() if k != "hash"} for u, item in self._read_held().items()}

    def devices(self):
        """Device logins (8 hex digits) in the password file; not the gateway's or a tool's."""
        return sorted(u for u in self._read_passwd() if len(u) == 8 and all(c in "0123456789abcdef" for c in u))

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
            listeners.append("listener %d 127.0.0.1\n%s" % (self.port, LISTENER_OPTIONS))
        listeners.append(
            "listener %d %s\n%scafile %s/ca.pem\ncertfile %s/server.pem\nkeyfile %s/server.key\n"
            "tls_version tlsv1.2\n" % (self.tls_port, self.bind, LISTENER_OPTIONS, self.workdir, self.workdir, self.workdir))
        return CONF_TEMPLATE.format(workdir=self.workdir, user=pwd.getpwuid(os.getuid()).pw_name, inflight=self.inflight,
                                    queued=self.queued, queued_bytes=self.queued_bytes,
                                    retain="true" if self.retain_available else "false", listeners="".join(listeners))

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

    def reload(self, confirm_s=None):
        """SIGHUP the running broker (ours or the one in mosquitto.pid) and wait until it has
        re-read its files; no-op (False) when none runs.

        Mosquitto clears its reload flag only after the reload, so a SIGHUP that arrives while
        it reloads is lost -- and a reload takes a while: it re-checks every connected client's
        password (0.57 ms per device at 1,000 PBKDF2 iterations, see DEVICE_HASH_ITERATIONS).
        Two quick `add_device` calls then left the second device refused until some later reload (seen: a village of host
        boards where only the first could log in). So the signal is confirmed: a "Reloading
        config." line logged after the files were written proves a reload that reads them; without
        one the signal is sent again. Without a log to read (a broker not started by us), one
        signal is all we can do.

        The line is logged when the reload begins, and SIGHUPs stay lost until it ends: with ten
        devices quarantined one after another, each second SIGHUP was lost and waited for the
        1 s resend (issue 13). So, with a plain listener, we also wait for the end: the main loop
        answering a refused anonymous CONNECT (one "not authorised" log line per reload). Callers
        with many changes make them first and reload once (add_devices, hold_devices)."""
        if not self.running():
            return False
        pid = self.pid
        log_path = os.path.join(self.workdir, "mosquitto.log")
        try:
            offset = os.path.getsize(log_path)
        except OSError:
            offset = None
        deadline = time.monotonic() + (RELOAD_CONFIRM_S if confirm_s is None else confirm_s)
        while True:
            os.kill(pid, signal.SIGHUP)
            if offset is None:
                return True
            resend = time.monotonic() + RELOAD_RESEND_S
            while time.monotonic() < min(resend, deadline):
                if _logged_since(log_path, offset, RELOAD_MARK):
                    if self.port:
                        # at most 5 s: a broker object made from a shell without the port in its
                        # config has a free port of its own (refused at once), never a silent one
                        _main_loop_answers(self.port, max(0.1, min(5.0, deadline - time.monotonic())))
                    return True
                time.sleep(0.01)
            if not self.running():
                return False
            if time.monotonic() >= deadline:
                raise BrokerError("broker (pid %d) did not confirm a reload (%s): a device just added or"
                                  " revoked may not take effect until the next reload" % (pid, log_path))

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
