"""`fengqiao verify`: check upstream envelopes offline with only the gateway's public key.

    fengqiao gateway pubkey --config gateway.toml > gateway.pub      # on the gateway, once
    fengqiao verify envelopes.jsonl --pubkey gateway.pub [--device-keys keys.txt] [--show]
    fengqiao verify --broker HOST:PORT --topic 'fq/v1/county/#' --count 100 --timeout 30 --pubkey ...

Checks (SPEC section 10.4): every envelope's fields and recomputed chain hash, every signature, the
chain's continuity (a removed, reordered or altered envelope breaks it), that every event is covered
by a valid signature, and -- for devices whose keys are given -- the device MAC inside each frame.
Prints a summary, then one line per problem; exit status 1 when there is any problem.

Device keys file: one device per line, `<device id: 8 hex> [<key id>] <key: 64 hex>`, `#` comments;
or a JSON object {"0000002a": "<64 hex>", "0000002b:2": "<64 hex>"}.
"""

import json
import sys
import threading
import time

from gateway import envelope
from gateway.keys import KeyFileError, load_public_key
from tools.errors import CliError

HELP = "check upstream envelopes (a file or a live subscription) with the gateway public key"


def add_arguments(parser):
    parser.add_argument("files", nargs="*", metavar="FILE", help="envelope dump(s), one per line ('-' = stdin)")
    parser.add_argument("--pubkey", required=True, help="gateway public key: file or text, PEM or 64 hex chars")
    parser.add_argument("--device-keys", metavar="FILE", help="device keys, to check device MACs too")
    parser.add_argument("--broker", metavar="HOST:PORT", help="subscribe live instead of reading files")
    parser.add_argument("--topic", help="topic or filter to subscribe to (with --broker)")
    parser.add_argument("--count", type=int, help="stop after this many envelopes (with --broker)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to listen (with --broker; default 30)")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--cafile", help="CA certificate for a TLS broker")
    parser.add_argument("--save", metavar="FILE", help="write the received envelopes here (with --broker)")
    parser.add_argument("--from-event", type=int, metavar="N",
                        help="the dump must start at event N (default: 1 for files, any for --broker)")
    parser.add_argument("--show", action="store_true", help="print every envelope human-readably first")


def load_device_keys(path):
    """{device_id: key} and {(device_id, key_id): key} from the file formats described above."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise CliError("cannot read device keys %s: %s" % (path, exc)) from exc
    keys = {}
    if text.lstrip().startswith("{"):
        try:
            items = [(k.split(":") + [None])[:2] + [v] for k, v in json.loads(text).items()]
        except (ValueError, AttributeError) as exc:
            raise CliError("device keys %s: not a JSON object of strings: %s" % (path, exc)) from exc
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) not in (2, 3):
                raise CliError("device keys %s line %d: expected '<device id> [<key id>] <key hex>'" % (path, n))
            items.append([parts[0], parts[1] if len(parts) == 3 else None, parts[-1]])
    for dev, key_id, hexkey in items:
        try:
            device_id = int(dev, 16)
            key = bytes.fromhex(hexkey)
            kid = int(key_id) if key_id is not None else None
        except (ValueError, TypeError) as exc:
            raise CliError("device keys %s: bad entry for %r: %s" % (path, dev, exc)) from exc
        if len(key) != 32:
            raise CliError("device keys %s: key of %s is not 32 bytes" % (path, dev))
        keys[(device_id, kid) if kid is not None else device_id] = key
    return keys


def read_files(paths):
    """The lines of the dump files, one at a time (a county dump can be large)."""
    for path in paths:
        try:
            if path == "-":
                for line in sys.stdin:
                    yield line
            else:
                with open(path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        yield line
        except OSError as exc:
            raise CliError("cannot read %s: %s" % (path, exc)) from exc


def _shown(lines):
    for line in lines:
        if line.strip():
            try:
                print(envelope.render(envelope.loads(line)))
            except envelope.EnvelopeError as exc:
                print("(unreadable envelope: %s)" % exc)
        yield line


def subscribe(host, port, topic, count, timeout_s, username=None, password=None, cafile=None):
    """Envelope lines received on `topic` until `count` (if given) or the timeout."""
    import paho.mqtt.client as mqtt

    lines, done, subscribed = [], threading.Event(), threading.Event()
    errors = []

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            errors.append("broker refused the connection: %s" % reason_code)
            done.set()
        else:
            client.subscribe(topic, qos=1)

    def on_message(client, userdata, msg):
        for line in msg.payload.decode("utf-8", "replace").split("\n"):
            if line.strip():
                lines.append(line)
        if count is not None and len(lines) >= count:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if username:
        c.username_pw_set(username, password)
    if cafile:
        c.tls_set(ca_certs=cafile)
    c.on_connect = on_connect
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = on_message
    try:
        c.connect(host, port, keepalive=30)
    except OSError as exc:
        raise CliError("cannot connect to %s:%d: %s" % (host, port, exc)) from exc
    c.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        c.disconnect()
        c.loop_stop()
    if errors:
        raise CliError(errors[0])
    return list(lines)


def run(args):
    try:
        public_key = load_public_key(args.pubkey)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    device_keys = load_device_keys(args.device_keys) if args.device_keys else {}
    extra = []
    if args.broker:
        if args.files:
            raise CliError("give either FILEs or --broker, not both")
        if not args.topic:
            raise CliError("--broker needs --topic")
        host, _, port = args.broker.rpartition(":")
        try:
            port = int(port)
        except ValueError as exc:
            raise CliError("--broker must be HOST:PORT") from exc
        t0 = time.monotonic()
        lines = subscribe(host or "127.0.0.1", port, args.topic, args.count, args.timeout,
                          args.username, args.password, args.cafile)
        if args.count is not None and len(lines) < args.count:
            extra.append("received only %d of %d envelope(s) within %.0f s"
                         % (len(lines), args.count, time.monotonic() - t0))
        if args.save:
            with open(args.save, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
    elif args.files:
        lines = read_files(args.files)
    else:
        raise CliError("give a FILE of envelopes or --broker/--topic")
    if args.show:
        lines = _shown(lines)
    first = args.from_event if args.from_event is not None else (None if args.broker else 1)
    report = envelope.verify_envelopes(lines, public_key, device_keys, first_event=first)
    problems = extra + report.problems
    if report.envelopes == 0 and not problems:
        problems.append("no envelopes to verify")
    print("checked with gateway key %s: %s" % (public_key.key_id, report.summary()))
    if not problems:
        print("OK: every envelope verified; the chain is continuous")
        return 0
    print("FAILED: %d problem(s):" % len(problems))
    for p in problems:
        print("  - %s" % p)
    return 1
